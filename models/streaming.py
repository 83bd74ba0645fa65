"""Stateful graphs for streams: a long sequence served chunk by chunk.

A unidirectional model's answer at step t depends only on steps 1..t, so a
server can keep each stream's recurrent state between chunks. The stream graph
is ``(input [B, T, ...], lengths [B], state_in [B, S]) -> (output, state_out
[B, S])`` (``service.model_json.StreamingJson``): each row is one stream's next
chunk, padded to the batch's longest; ``state_out`` is the row's state after
its own last valid step; ``output`` is the answer as if the stream ended there
(``[B, O]``), or every step's answer (``[B, T, O]``, zeros past each length)
for a tagger. An all-zero ``state_in`` starts a stream.

The state is a flat float32 vector, laid out by ``StateLayout``: per layer ``h``
(and ``c`` for an LSTM), then what a pooling readout carries from chunk to
chunk: the running sum (mean) or running maximum (max) of the top layer's
outputs, the running sum of the RNN's input when its mean is concatenated,
and the number of steps seen. The maximum is only read when the step count is
non-zero, so zeros mean "nothing seen yet".

Each layer runs as one packed ``torch.lstm``/``torch.gru`` over the rows sorted
by length, which returns every row's state at its own length; the
TorchScript-based ONNX exporter turns it into a native ONNX LSTM/GRU op with
``sequence_lens`` and ``initial_h``/``initial_c``, so a chunk costs what the
whole-sequence graph costs for the same steps. An LSTM with projections runs
as ``models.stack`` runs it: a plain LSTM of hidden size H whose recurrent
weight is ``W_hh @ W_hr``; its state holds the unprojected ``h`` (H values),
from which the projected one is ``W_hr h``. The Cho GRU (F9) carries its one
``h`` through its scripted loop (TorchScript) and an ONNX GRU op's
``initial_h``.

Export writes the stream graphs only after checking them the way
``models.parity`` checks the whole graphs: several streams, each cut into
chunks (one step at a time, all at once, random cuts), their chunks batched
together in random rounds and padded with noise to the round's longest, must
answer what the reference answers for the stream's prefix up to each chunk's
end (per step: for the whole stream), within the tolerance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from models import cho
from models.cho import ChoGRUModel
from models.parity import TOLERANCE, Failure, ParityError, Reference
from models.spec import ModelSpec
from models.stack import SequenceModel, step_at
from service.model_json import ModelJson, StreamFormatsJson, StreamingJson

StreamableModel = SequenceModel | ChoGRUModel

ONNX_FILE = "stream.onnx"
TORCHSCRIPT_FILE = "stream.pt"
INPUT, LENGTHS, STATE_IN, OUTPUT, STATE_OUT = "input", "lengths", "state_in", "output", "state_out"
ONNX_OPSET = 18

KNOWN_READOUTS = ("last", "final", "mean", "max", "all")
KNOWN_LAYERS = ("embedding", "input_mlp", "rnn", "norm", "head")
"""The parts of a ``SequenceModel`` the stream graph reproduces; a model with
any other part is not streamed rather than streamed wrong."""
KNOWN_SPEC_FIELDS = frozenset(
    """name task cell hidden_size num_outputs input_kind input_size embedding_dim tokenizer num_layers
    bidirectional proj_size dropout readout head_hidden family names reference input_mlp activation layer_norm
    concat_input_mean array_layout max_length labels output_names input_normalization output_normalization
    description metrics provenance input_layers head_layers output_activation layer_norm_eps""".split()  # noqa: SIM905 (a list of names reads better as words)
)
"""The spec fields the stream graph accounts for. A field added to ``ModelSpec``
later has a streaming form only once it is listed here: until then a spec that
sets it (to other than its default) is not streamed, rather than streamed wrong."""

StreamRunner = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``(input, lengths, state_in) -> (output, state_out)``, as a served stream graph is called."""

_jit_trace = cast(Callable[..., torch.jit.ScriptModule], torch.jit.trace)
_jit_load = cast(Callable[..., torch.jit.ScriptModule], torch.jit.load)


# --- which models stream, and their state -------------------------------------------------------


def unstreamable_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot serve streams, or ``None`` when it can."""
    if isinstance(model, ChoGRUModel):
        return None
    if not isinstance(model, SequenceModel):
        return f"{type(model).__name__} has no streaming form"
    spec = model.spec
    if spec.bidirectional:
        return "bidirectional: the backward direction starts at the end of the sequence, which a stream has not reached"
    if spec.readout not in KNOWN_READOUTS:
        return f"readout {spec.readout!r} has no running form"
    unknown = [name for name, _ in model.named_children() if name not in KNOWN_LAYERS]
    if unknown:
        return f"it has layers ({', '.join(unknown)}) the stream graph does not reproduce"
    changed = [f.name for f in dataclasses.fields(spec) if f.name not in KNOWN_SPEC_FIELDS and _set(spec, f)]
    if changed:
        return f"spec field(s) {', '.join(changed)} have no streaming form"
    return None


def _set(spec: ModelSpec, f: dataclasses.Field[Any]) -> bool:
    if f.default is not dataclasses.MISSING:
        return bool(getattr(spec, f.name) != f.default)
    if f.default_factory is not dataclasses.MISSING:
        return bool(getattr(spec, f.name) != f.default_factory())
    return True


@dataclass(frozen=True)
class StateLayout:
    """Named slices of the flat state vector, in order."""

    segments: tuple[tuple[str, int], ...]

    @property
    def size(self) -> int:
        return sum(size for _, size in self.segments)

    def split(self, state: Tensor) -> dict[str, Tensor]:
        """``[B, S]`` -> each segment's ``[B, size]``."""
        parts, start = {}, 0
        for name, size in self.segments:
            parts[name] = state[:, start : start + size]
            start += size
        return parts

    def join(self, parts: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([parts[name] for name, _ in self.segments], dim=1)

    def to_list(self) -> list[dict[str, Any]]:
        return [{"name": name, "size": size} for name, size in self.segments]


def state_layout(model: StreamableModel) -> StateLayout:
    if isinstance(model, ChoGRUModel):
        return StateLayout((("layer0.h", model.spec.hidden_size),))
    spec = model.spec
    segments: list[tuple[str, int]] = []
    for layer in range(spec.num_layers):
        segments.append((f"layer{layer}.h", spec.hidden_size))
        if spec.cell == "lstm":
            segments.append((f"layer{layer}.c", spec.hidden_size))
    if spec.readout == "mean":
        segments.append(("readout.sum", spec.step_size))
    elif spec.readout == "max":
        segments.append(("readout.max", spec.step_size))
    if spec.concat_input_mean:
        segments.append(("input.sum", spec.rnn_input_width))
    if spec.readout in ("mean", "max") or spec.concat_input_mean:
        segments.append(("steps", 1))
    return StateLayout(tuple(segments))


# --- the stream modules --------------------------------------------------------------------------


class StreamingSequenceModel(nn.Module):
    """``forward(x, lengths, state_in) -> (output, state_out)`` for a unidirectional ``SequenceModel``.

    Shares the model's parameters. Written without device constants (no
    ``arange(device=...)``), so the traced TorchScript runs wherever it is loaded.
    """

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        reason = unstreamable_reason(model)
        if reason is not None:
            raise ValueError(f"cannot stream {model.spec.name}: {reason}")
        self.model = model
        self.spec = model.spec
        self.layout = state_layout(model)

    def forward(self, x: Tensor, lengths: Tensor, state_in: Tensor) -> tuple[Tensor, Tensor]:
        model, spec = self.model, self.spec
        state = self.layout.split(state_in)
        new_state: dict[str, Tensor] = {}
        encoded = model.encode(x)  # [B, T, F']
        # Sorted longest first, as packing needs; `restore` puts rows back.
        sorted_lengths, order = torch.sort(lengths, descending=True)
        restore = torch.argsort(order)
        batch_lengths = sorted_lengths.cpu()  # packing reads lengths on the CPU
        steps = x.shape[1]
        out = encoded.index_select(0, order)
        for layer in range(spec.num_layers):
            h0 = state[f"layer{layer}.h"].index_select(0, order).unsqueeze(0)
            packed = pack_padded_sequence(out, batch_lengths, batch_first=True)
            weights = model.rnn._weights(layer, "")
            if spec.cell == "lstm":
                c0 = state[f"layer{layer}.c"].index_select(0, order).unsqueeze(0)
                w_hr = weights[4] if spec.proj_size else None
                if w_hr is not None:
                    weights = [weights[0], weights[1] @ w_hr, weights[2], weights[3]]
                data, h, c = torch.lstm(packed.data, packed.batch_sizes, [h0, c0], weights, True, 1, 0.0, False, False)
                new_state[f"layer{layer}.c"] = c[0].index_select(0, restore)
            else:
                w_hr = None
                data, h = torch.gru(packed.data, packed.batch_sizes, h0, weights, True, 1, 0.0, False, False)
            new_state[f"layer{layer}.h"] = h[0].index_select(0, restore)
            out, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes), batch_first=True, total_length=steps)
            if w_hr is not None:
                out = out @ w_hr.t()  # [B, T, H] -> [B, T, P]
        out = out.index_select(0, restore)
        if model.norm is not None:
            out = model.norm(out)
        valid = _valid_steps(out, lengths)  # [B, T, 1]
        if spec.readout in ("mean", "max") or spec.concat_input_mean:
            seen = state["steps"]
            new_state["steps"] = seen + lengths.to(seen.dtype).unsqueeze(1)
        if spec.readout == "all":
            pooled = out
        elif spec.readout == "mean":
            total = state["readout.sum"] + torch.where(valid, out, torch.zeros_like(out)).sum(dim=1)
            new_state["readout.sum"] = total
            pooled = total / new_state["steps"]
        elif spec.readout == "max":
            before = torch.where(seen > 0, state["readout.max"], torch.full_like(state["readout.max"], float("-inf")))
            here = torch.where(valid, out, torch.full_like(out, float("-inf"))).max(dim=1).values
            pooled = torch.maximum(before, here)
            new_state["readout.max"] = pooled
        else:  # last, final: the chunk's last valid step
            pooled = step_at(out, lengths - 1)
        if spec.concat_input_mean:
            total_in = state["input.sum"] + torch.where(valid, encoded, torch.zeros_like(encoded)).sum(dim=1)
            new_state["input.sum"] = total_in
            pooled = torch.cat([pooled, total_in / new_state["steps"]], dim=1)
        y: Tensor = model.head(pooled)
        if model.output_mean is not None and model.output_std is not None:
            y = y * model.output_std + model.output_mean
        if spec.readout == "all":
            y = torch.where(valid, y, torch.zeros_like(y))
        return y, self.layout.join(new_state)


def _valid_steps(x: Tensor, lengths: Tensor) -> Tensor:
    """``[B, T, 1]``: step t < length, from a cumulative sum rather than an
    ``arange`` (which a trace would pin to the tracing device)."""
    position = torch.ones_like(x[:, :, :1]).cumsum(dim=1)  # 1..T
    return position <= lengths.to(x.dtype).view(-1, 1, 1)


class StreamingChoGRU(nn.Module):
    """``forward(x, lengths, state_in [B, H]) -> (output [B, O], state_out [B, H])`` for F9."""

    def __init__(self, model: ChoGRUModel) -> None:
        super().__init__()
        self.model = model
        self.spec = model.spec
        self.layout = state_layout(model)

    def forward(self, x: Tensor, lengths: Tensor, state_in: Tensor) -> tuple[Tensor, Tensor]:
        h = self.model.final_state(x, lengths, state_in)
        return self.model.head_output(h), h


StreamModule = StreamingSequenceModel | StreamingChoGRU


def stream_module(model: StreamableModel) -> StreamModule:
    """The stream graph's module for ``model`` (which must be streamable), in eval mode."""
    if isinstance(model, ChoGRUModel):
        return StreamingChoGRU(model).eval()
    return StreamingSequenceModel(model).eval()


# --- writing and loading the graphs ---------------------------------------------------------------


def example_inputs(spec: ModelSpec, state_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Batch 3, lengths all different and not the longest first, a non-zero state."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([4, 9, 6], dtype=torch.int64)
    if spec.input_kind == "text":
        assert spec.tokenizer is not None
        x = torch.randint(2, len(spec.tokenizer.vocabulary), (3, 9), generator=generator)
    else:
        assert spec.input_size is not None
        x = torch.randn(3, 9, spec.input_size, generator=generator)
    return x, lengths, torch.rand(3, state_size, generator=generator)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters: Python warnings, stdout, and the C++ shape-inference
    warnings packing draws (written straight to file descriptor 2)."""
    with (
        tempfile.TemporaryFile() as sink,
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def write_onnx(module: StreamModule, path: Path) -> None:
    spec = module.spec
    if isinstance(module, StreamingChoGRU):
        cho.write_onnx(module.model, path, INPUT, LENGTHS, OUTPUT, ONNX_OPSET, state=(STATE_IN, STATE_OUT))
        return
    dynamic: dict[str, dict[int, str]] = {
        INPUT: {0: "batch", 1: "time"},
        LENGTHS: {0: "batch"},
        STATE_IN: {0: "batch"},
        OUTPUT: {0: "batch", 1: "time"} if spec.readout == "all" else {0: "batch"},
        STATE_OUT: {0: "batch"},
    }
    with _quiet():
        torch.onnx.export(
            module,
            example_inputs(spec, module.layout.size),
            str(path),
            dynamo=False,  # the TorchScript-based exporter turns packing into sequence_lens
            opset_version=ONNX_OPSET,
            input_names=[INPUT, LENGTHS, STATE_IN],
            output_names=[OUTPUT, STATE_OUT],
            dynamic_axes=dynamic,
        )


def write_torchscript(module: StreamModule, path: Path) -> None:
    with _quiet():
        traced = _jit_trace(module, example_inputs(module.spec, module.layout.size), check_trace=False)
        traced.save(str(path))


def check_onnx_signature(path: Path, spec: ModelSpec, state_size: int) -> list[str]:
    """Names, dtypes, ranks and dynamic axes of the stream graph's inputs and outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    text = spec.input_kind == "text"
    per_step = spec.readout == "all"
    want = {
        INPUT: ("tensor(int64)" if text else "tensor(float)", 2 if text else 3, 2),
        LENGTHS: ("tensor(int64)", 1, 1),
        STATE_IN: ("tensor(float)", 2, 1),
        OUTPUT: ("tensor(float)", 3 if per_step else 2, 2 if per_step else 1),
        STATE_OUT: ("tensor(float)", 2, 1),
    }
    got = {a.name: a for a in [*session.get_inputs(), *session.get_outputs()]}
    problems = []
    for name, (dtype, rank, dynamic) in want.items():
        arg = got.get(name)
        if arg is None:
            problems.append(f"{name!r} missing (has {sorted(got)})")
        elif arg.type != dtype or len(arg.shape) != rank:
            problems.append(f"{name!r} is {arg.type} rank {len(arg.shape)}, expected {dtype} rank {rank}")
        elif any(isinstance(d, int) for d in arg.shape[:dynamic]):
            problems.append(f"{name!r} has a fixed batch or time axis: {arg.shape}")
        elif name in (STATE_IN, STATE_OUT) and arg.shape[1] != state_size:
            problems.append(f"{name!r} has {arg.shape[1]} state values, expected {state_size}")
    return problems


def torch_stream_runner(module: nn.Module | torch.jit.ScriptModule) -> StreamRunner:
    def run(x: np.ndarray, lengths: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            out, new_state = module(torch.from_numpy(x), torch.from_numpy(lengths), torch.from_numpy(state))
        return out.numpy(), new_state.numpy()

    return run


def onnx_stream_runner(path: Path, section: StreamingJson | None = None) -> StreamRunner:
    """ONNX Runtime on the CPU; tensor names from ``section``, else export's own."""
    import onnxruntime as ort

    names = (INPUT, LENGTHS, STATE_IN, OUTPUT, STATE_OUT)
    if section is not None:
        names = (section.input, section.lengths, section.state_in, section.output, section.state_out)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: np.ndarray, lengths: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, new_state = session.run(list(names[3:]), dict(zip(names[:3], (x, lengths, state), strict=True)))
        return out, new_state

    return run


def load_stream_runner(entry: Path, runtime: Literal["onnx", "torchscript"] = "onnx") -> StreamRunner:
    """The stream graph of the repository entry ``<repository>/<name>/<version>/``, on the CPU.

    Raises ``ValueError`` when the entry has no streaming section or no file of
    that runtime.
    """
    meta = ModelJson.model_validate_json((entry / "model.json").read_text())
    section = meta.streaming
    if section is None:
        reason = (meta.model_extra or {}).get("streaming_unavailable", "no streaming section")
        raise ValueError(f"{entry}: cannot stream: {reason}")
    file = section.formats.onnx if runtime == "onnx" else section.formats.torchscript
    if file is None:
        raise ValueError(f"{entry}: no {runtime} stream graph")
    if runtime == "onnx":
        return onnx_stream_runner(entry / file, section)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch_stream_runner(_jit_load(str(entry / file)).eval())


# --- chunked-vs-whole parity -----------------------------------------------------------------------


@dataclass(frozen=True)
class StreamCase:
    """One stream: its whole sequence ``[L, ...]`` and how it is cut into chunks."""

    sequence: np.ndarray
    chunks: tuple[int, ...]

    @property
    def ends(self) -> list[int]:
        return list(itertools.accumulate(self.chunks))


def random_steps(spec: ModelSpec, rng: np.random.Generator, steps: int) -> np.ndarray:
    """``steps`` random inputs as the model reads them: token ids or (scaled) features."""
    if spec.input_kind == "text":
        assert spec.tokenizer is not None
        return rng.integers(1, len(spec.tokenizer.vocabulary), size=steps).astype(np.int64)
    assert spec.input_size is not None
    x = rng.standard_normal((steps, spec.input_size)).astype(np.float32)
    norm = spec.input_normalization
    if norm is not None:
        x = x * np.asarray(norm.std, np.float32) + np.asarray(norm.mean, np.float32)
    return x.astype(np.float32)


def stream_cases(spec: ModelSpec, count: int, seed: int) -> list[StreamCase]:
    """``count`` streams cut three ways in turn: one step at a time, all at once,
    at random points. Lengths run from 1 to twice ``max_length`` (a stream is
    longer than any chunk); a chunk is at most ``max_length`` steps."""
    rng = np.random.default_rng(seed)
    longest = spec.max_length
    cases = []
    for i in range(count):
        style = i % 3
        if i < 3:  # a stream longer than max_length one step at a time, one max_length chunk, one step
            length = (min(2 * longest, 40), longest, 1)[i]
        elif style == 0:
            length = int(rng.integers(2, min(longest, 40) + 1))  # every step a chunk: keep it short
        elif style == 1:
            length = int(rng.integers(1, longest + 1))
        else:
            length = int(rng.integers(2, 2 * longest + 1))
        if style == 0:
            chunks = [1] * length
        elif style == 1:
            chunks = [length]
        else:
            cuts = sorted(set(rng.integers(1, max(length, 2), size=int(rng.integers(1, 6))).tolist()) - {length})
            bounds = [0, *cuts, length]
            chunks = []
            for a, b in itertools.pairwise(bounds):
                while b - a > longest:
                    chunks.append(longest)
                    a += longest
                chunks.append(b - a)
        cases.append(StreamCase(random_steps(spec, rng, length), tuple(chunks)))
    return cases


Round = list[tuple[int, int]]
"""One batch: ``(stream, chunk index)`` per row, in row order."""


def schedule(cases: list[StreamCase], seed: int) -> list[Round]:
    """Rounds in which a random subset of the unfinished streams sends its next chunk, rows shuffled."""
    rng = np.random.default_rng(seed + 1)
    sent = [0] * len(cases)
    rounds: list[Round] = []
    while True:
        waiting = [i for i, case in enumerate(cases) if sent[i] < len(case.chunks)]
        if not waiting:
            return rounds
        rows = [i for i in waiting if rng.random() < 0.7] or [waiting[int(rng.integers(len(waiting)))]]
        rng.shuffle(rows)
        rounds.append([(i, sent[i]) for i in rows])
        for i in rows:
            sent[i] += 1


@dataclass(frozen=True)
class StreamFailure(Failure):
    """A chunk's answer that differs from the reference on the stream's prefix."""

    chunk: int = 0
    chunks: int = 0
    end: int = 0

    def describe(self) -> str:
        where = (
            f"{self.graph}: stream {self.position} of length {self.length}, chunk {self.chunk + 1} of {self.chunks} "
            f"ending at step {self.end}, in round {self.batch} (batch of {self.batch_size}, padded to {self.padded_to})"
        )
        if self.problem != "values":
            return f"{where}: {self.problem}"
        return f"{where}: max abs diff {self.max_abs_diff:.3g} > {self.tolerance:g}"


@dataclass
class StreamParityReport:
    tolerance: float
    streams: int
    chunks: int
    rounds: int
    lengths_checked: tuple[int, int]
    largest_batch: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    reference_name: str = "seqserve reference"

    def to_dict(self) -> dict[str, object]:
        return {
            "tolerance": self.tolerance,
            "reference": f"{self.reference_name}, run on each stream's whole sequence (or prefix) alone",
            "streams": self.streams,
            "chunks": self.chunks,
            "rounds": self.rounds,
            "min_length": self.lengths_checked[0],
            "max_length": self.lengths_checked[1],
            "largest_batch": self.largest_batch,
            "max_abs_diff": self.max_abs_diff,
        }


def check_stream_parity(
    spec: ModelSpec,
    graphs: Mapping[str, StreamRunner],
    state_size: int,
    reference: Reference,
    streams: int = 24,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    reference_name: str = "seqserve reference",
) -> StreamParityReport:
    """Serve random chunkings of random streams through every graph, batched and
    padded together; raise ``ParityError`` listing every chunk answer that is
    off, or return the worst differences."""
    cases = stream_cases(spec, streams, seed)
    rounds = schedule(cases, seed)
    per_step = spec.readout == "all"
    expected: dict[tuple[int, int], np.ndarray] = {}  # (stream, prefix length) -> reference answer

    def want(stream: int, end: int) -> np.ndarray:
        key = (stream, len(cases[stream].sequence) if per_step else end)
        if key not in expected:
            expected[key] = reference(cases[stream].sequence[: key[1]])
        return expected[key]

    rng = np.random.default_rng(seed + 2)
    failures: list[Failure] = []
    worst = {name: 0.0 for name in graphs}
    states = {name: np.zeros((len(cases), state_size), np.float32) for name in graphs}
    checked = 0
    for r, rows in enumerate(rounds):
        sizes = [cases[i].chunks[k] for i, k in rows]
        steps = max(sizes)
        starts = [cases[i].ends[k] - cases[i].chunks[k] for i, k in rows]
        # Padding is noise, not zeros: a padded step must change nothing.
        x = np.stack(
            [
                _padded(cases[i].sequence[s : s + n], steps, spec, rng)
                for (i, _), s, n in zip(rows, starts, sizes, strict=True)
            ]
        )
        lengths = np.asarray(sizes, np.int64)
        stream_ids = [i for i, _ in rows]
        for name, run in graphs.items():
            out, new_state = run(x, lengths, states[name][stream_ids])
            out_shape = (len(rows), steps, spec.num_outputs) if per_step else (len(rows), spec.num_outputs)
            shape_problem = None
            if out.shape != out_shape:
                shape_problem = f"output shape {out.shape}, expected {out_shape}"
            elif new_state.shape != (len(rows), state_size):
                shape_problem = f"state_out shape {new_state.shape}, expected {(len(rows), state_size)}"
            for row, ((i, k), start, n) in enumerate(zip(rows, starts, sizes, strict=True)):
                failure = _failure_at(name, r, len(rows), i, cases[i], k, steps, tolerance)
                if shape_problem is not None:
                    failures.append(dataclasses.replace(failure, max_abs_diff=float("inf"), problem=shape_problem))
                    break
                checked += 1
                if per_step:
                    got, expect = out[row, :n], want(i, 0)[start : start + n]
                    if np.any(out[row, n:] != 0):
                        failures.append(dataclasses.replace(failure, problem="non-zero output past the chunk's length"))
                else:
                    got, expect = out[row], want(i, start + n)
                diff = float(np.max(np.abs(got.astype(np.float64) - expect)))
                if not np.isfinite(diff) or diff > tolerance:
                    failures.append(dataclasses.replace(failure, max_abs_diff=diff))
                elif diff > worst[name]:
                    worst[name] = diff
            if shape_problem is None:
                states[name][stream_ids] = new_state
    if failures:
        raise ParityError(failures, checked)
    lengths_all = [len(case.sequence) for case in cases]
    return StreamParityReport(
        tolerance=tolerance,
        streams=len(cases),
        chunks=sum(len(case.chunks) for case in cases),
        rounds=len(rounds),
        lengths_checked=(min(lengths_all), max(lengths_all)),
        largest_batch=max(len(rows) for rows in rounds),
        max_abs_diff=worst,
        reference_name=reference_name,
    )


def _failure_at(
    graph: str, r: int, size: int, stream: int, case: StreamCase, chunk: int, padded_to: int, tolerance: float
) -> StreamFailure:
    return StreamFailure(
        graph=graph,
        batch=r,
        batch_size=size,
        position=stream,
        length=len(case.sequence),
        padded_to=padded_to,
        max_abs_diff=0.0,
        tolerance=tolerance,
        chunk=chunk,
        chunks=len(case.chunks),
        end=case.ends[chunk],
    )


def _padded(chunk: np.ndarray, steps: int, spec: ModelSpec, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([chunk, random_steps(spec, rng, steps - len(chunk))])


# --- what export writes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamExport:
    """What export adds to an entry for streaming: the section and files, or why not."""

    section: StreamingJson | None
    reason: str | None = None
    layout: StateLayout | None = None
    report: StreamParityReport | None = None
    files: tuple[Path, ...] = ()

    def apply(self, meta: ModelJson) -> ModelJson:
        """``meta`` with the streaming section, or with the reason there is none."""
        data = meta.model_dump(mode="json")
        if self.section is None:
            data["streaming"] = None
            data["streaming_unavailable"] = self.reason
        else:
            assert self.layout is not None
            data["streaming"] = self.section.model_dump(mode="json")
            data["stream_state_layout"] = self.layout.to_list()
        return ModelJson.model_validate(data)

    def parity(self) -> dict[str, object]:
        if self.report is None:
            return {"streaming": {"unavailable": self.reason}}
        return {"streaming": self.report.to_dict()}


def export_stream(
    model: StreamableModel,
    folder: Path,
    reference: Reference,
    reference_name: str,
    *,
    batches: int = 100,
    seed: int = 0,
    tolerance: float = TOLERANCE,
) -> StreamExport:
    """Write ``stream.onnx`` and ``stream.pt`` into ``folder`` for a streamable
    model and check them chunk by chunk against ``reference``, over a quarter as
    many streams as the whole graphs' parity ``batches`` (6 to 24); raises
    ``ParityError`` when they disagree (``ExportError`` for a bad graph
    signature). A model that cannot stream gets no files and its reason."""
    from models.export import ExportError  # NOTE: export imports this module

    streams = min(max(batches // 4, 6), 24)
    reason = unstreamable_reason(model)
    if reason is not None:
        return StreamExport(None, reason)
    module = stream_module(model)
    spec, size = module.spec, module.layout.size
    onnx_path, ts_path = folder / ONNX_FILE, folder / TORCHSCRIPT_FILE
    write_onnx(module, onnx_path)
    write_torchscript(module, ts_path)
    problems = check_onnx_signature(onnx_path, spec, size)
    if problems:
        raise ExportError("ONNX stream graph signature: " + "; ".join(problems))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded_ts = _jit_load(str(ts_path))
    graphs = {
        "stream eager": torch_stream_runner(module),
        "stream onnx": onnx_stream_runner(onnx_path),
        "stream torchscript": torch_stream_runner(loaded_ts),
    }
    report = check_stream_parity(spec, graphs, size, reference, streams, seed, tolerance, reference_name)
    section = StreamingJson(
        formats=StreamFormatsJson(onnx=ONNX_FILE, torchscript=TORCHSCRIPT_FILE),
        state_size=size,
        per_step=spec.readout == "all",
        input=INPUT,
        lengths=LENGTHS,
        state_in=STATE_IN,
        output=OUTPUT,
        state_out=STATE_OUT,
    )
    return StreamExport(section, None, module.layout, report, (onnx_path, ts_path))


def describe(entry: Path) -> str:
    """One line on an entry's streaming, for export's output."""
    meta = json.loads((entry / "model.json").read_text())
    if meta.get("streaming") is None:
        return f"streaming: not available ({meta.get('streaming_unavailable', 'no streaming section')})"
    parity = json.loads((entry / "parity.json").read_text()).get("streaming", {})
    s = meta["streaming"]
    diffs = ", ".join(f"{k.removeprefix('stream ')} {v:.2g}" for k, v in parity.get("max_abs_diff", {}).items())
    files = ", ".join(f for f in s["formats"].values() if f)
    return (
        f"streaming: {files} (state of {s['state_size']} floats; chunked parity over {parity.get('streams')} streams "
        f"in {parity.get('chunks')} chunks: {diffs})"
    )
