"""A repository of streamable models (each with its user module as reference) and a server over it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.service.api.conftest import Server, run_server
from tests.service.conftest import BuiltRepository
from tests.service.streams.graphs import StreamEntry, write_stream_entry


@dataclass(frozen=True)
class StreamRepository:
    path: Path
    entries: dict[str, StreamEntry]


@pytest.fixture(scope="session")
def stream_repository(tmp_path_factory: pytest.TempPathFactory, test_repository: BuiltRepository) -> StreamRepository:
    root = tmp_path_factory.mktemp("stream-repository")
    entries = [
        write_stream_entry(root, "lstm-last", cell="lstm", readout="last", layers=2, seed=1),
        write_stream_entry(root, "gru-mean", cell="gru", readout="mean", task="classification", outputs=3, seed=2),
        write_stream_entry(root, "lstm-max", cell="lstm", readout="max", task="classification", seed=3),
        write_stream_entry(root, "gru-tagger", cell="gru", readout="per_step", task="tagging", outputs=4, seed=4),
        write_stream_entry(
            root,
            "text-lstm",
            cell="lstm",
            readout="last",
            task="classification",
            vocabulary=12,
            inputs=5,
            seed=5,
            formats=("torchscript",),
        ),
    ]
    # A bidirectional model (seqserve's own export, no `streaming` section) beside them.
    shutil.copytree(test_repository.path / "feat" / "1", root / "bidi" / "1")
    meta = json.loads((root / "bidi" / "1" / "model.json").read_text())
    meta["name"] = "bidi"
    (root / "bidi" / "1" / "model.json").write_text(json.dumps(meta))
    return StreamRepository(root, {entry.name: entry for entry in entries})


@pytest.fixture(scope="session")
def stream_server(stream_repository: StreamRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(
        stream_repository.path, "--max-delay-ms", "5", log_dir=tmp_path_factory.mktemp("stream-logs")
    ) as running:
        yield running
