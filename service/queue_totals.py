"""What every HTTP process has queued, in memory they share, so that the queue limits hold for the whole server.

With several HTTP processes (`--http-workers`) each has its own batcher per model version, so its own queue.
Dividing `max_queue` and `max_queued_tokens` among them would keep the total within the limits, but shrink what
one request may hold (`max_sequences_per_request` is capped by `max_queue`: 16 sequences with the defaults on 64
cores) and make a process refuse work while the others have room. So each process publishes its queue's counts
(sequences, time steps) into a table that the parent allocates before starting them: one row per queue, one
pair of cells per process. An admission reads the row's sums (`QueueCounter.totals`).

Every cell has one writer, its process's event loop, and is an aligned 8-byte integer, so a reader never sees a
torn value. Two processes admitting in the same instant may each miss the other's newest request, so for that
instant the total can pass a limit by at most a request per other process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def queue_key(name: str, version: int, *, streams: bool = False) -> str:
    """The row of a version's batcher, or of its stream batcher."""
    return f"{name}/{version}/streams" if streams else f"{name}/{version}"


def queue_keys(root: Path) -> list[str]:
    """A row for every queue a server of the repository `root` may start with: the batcher and the stream batcher
    of each `<name>/<version>` directory (more than are used: it reads no model.json, so that the parent process
    imports nothing heavy). A version published later (a repository poll) has no row; see `QueueTable.counter`."""
    pairs: set[tuple[str, int]] = set()
    with contextlib.suppress(OSError):  # no repository: no rows (the server reports it)
        for model in root.iterdir():
            if model.is_dir():
                pairs.update((model.name, int(v.name)) for v in model.iterdir() if v.is_dir() and v.name.isdigit())
    return [queue_key(name, version, streams=streams) for name, version in sorted(pairs) for streams in (False, True)]


def table_size(keys: Sequence[str], processes: int) -> int:
    """The table's length in 64-bit cells (at least one)."""
    return max(1, len(keys) * processes * 2)


def forget(cells: Any, processes: int, index: int) -> None:
    """Zero process `index`'s counts in every row: it has ended, and queues nothing any more."""
    for first in range(2 * index, len(cells) - 1, 2 * processes):
        cells[first] = cells[first + 1] = 0


class QueueTable:
    """The shared table as process `index` of `processes` sees it; `cells`: a shared array of `table_size` signed
    64-bit integers (`multiprocessing` `RawArray("q", ...)`), zeroed."""

    def __init__(self, cells: Any, keys: Sequence[str], index: int, processes: int) -> None:
        if len(cells) < table_size(keys, processes) or not 0 <= index < processes:
            raise ValueError("the queue table does not fit these keys and processes")
        self._cells = memoryview(cells).cast("B").cast("q")
        self._rows = {key: row for row, key in enumerate(keys)}
        self._index = index
        self.processes = processes

    def counter(self, key: str) -> QueueCounter | None:
        """The counter of queue `key`; None for a queue that has no row (the others cannot see it)."""
        row = self._rows.get(key)
        if row is None:
            return None
        return QueueCounter(self._cells, row * self.processes * 2, self._index, self.processes)


class QueueCounter:
    """One queue's row: this process publishes its counts, and reads everyone's sums."""

    __slots__ = ("_cells", "_first", "_own", "_stop")

    def __init__(self, cells: memoryview, first: int, index: int, processes: int) -> None:
        self._cells = cells
        self._first = first
        self._own = first + 2 * index
        self._stop = first + 2 * processes

    def publish(self, sequences: int, tokens: int) -> None:
        """This process's queue now holds `sequences` sequences of `tokens` time steps in all."""
        cells, own = self._cells, self._own
        cells[own] = sequences
        cells[own + 1] = tokens

    def totals(self) -> tuple[int, int]:
        """Sequences and time steps queued in every process."""
        cells, first, stop = self._cells, self._first, self._stop
        return sum(cells[first:stop:2]), sum(cells[first + 1 : stop : 2])
