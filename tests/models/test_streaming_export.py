"""Streams: export writes stateful graphs for unidirectional models, and a stream
served chunk by chunk through them, batched with other streams' chunks of other
lengths, answers what the user's module answers for the whole sequence alone.

Each case exports a tutorial-style module's checkpoint, then serves streams
through the written ONNX and TorchScript files the way a server would (zero
state to start, state out fed back in, rows padded with zeros), independently
of export's own chunked check."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import models.streaming as streaming
from models.checkpoint_export import export_checkpoint
from models.export import export_model
from models.parity import TOLERANCE, ParityError
from models.reference import ReferenceModel
from models.spec import ModelSpec, Normalization, Tokenizer
from models.stack import SequenceModel
from tests.models import stream_modules, tutorial

ROOT = Path(__file__).resolve().parents[2]
MAX_LENGTH = 8
CLASSES = {"task": "classification", "num_outputs": 3, "labels": ["a", "b", "c"]}


@dataclass(frozen=True)
class Case:
    module: Any
    """The user's module source (``tutorial`` or ``stream_modules``)."""
    cls: str
    kwargs: dict[str, Any]
    spec: dict[str, Any]
    inputs: str = "batch"


def rnn_names(rnn: str, head: str) -> dict[str, Any]:
    return {"prefixes": {f"{rnn}.": "rnn.", f"{head}.": "head."}}


FEATURES = {"input_size": 3, "hidden_size": 6}
CASES = {
    "F2-last": Case(
        tutorial,
        "LSTMForecaster",
        {"input_size": 3, "hidden_size": 6, "num_layers": 2, "output_size": 1},
        {
            "family": "F2",
            "task": "regression",
            "cell": "lstm",
            "num_layers": 2,
            **FEATURES,
            "readout": "last",
            "num_outputs": 1,
            "names": rnn_names("lstm", "linear"),
        },
    ),
    "F3-final": Case(
        tutorial,
        "GRUClassifier",
        {"input_size": 3, "hidden_size": 6, "num_layers": 2, "num_classes": 3, "bidirectional": False},
        {
            "family": "F3",
            "cell": "gru",
            "num_layers": 2,
            **FEATURES,
            "readout": "final",
            **CLASSES,
            "names": rnn_names("gru", "classifier"),
        },
    ),
    "F5-all": Case(
        stream_modules,
        "LSTMTagger",
        {"input_size": 3, "hidden_size": 6, "num_layers": 2, "num_tags": 4},
        {
            "family": "F5",
            "task": "tagging",
            "cell": "lstm",
            "num_layers": 2,
            **FEATURES,
            "readout": "all",
            "num_outputs": 4,
            "labels": ["O", "B", "I", "E"],
            "names": rnn_names("lstm", "hidden2tag"),
        },
    ),
    "F6-last": Case(
        stream_modules,
        "ProjectedLSTMForecaster",
        {"input_size": 3, "hidden_size": 6, "proj_size": 4, "num_layers": 2},
        {
            "family": "F6",
            "task": "regression",
            "cell": "lstm",
            "num_layers": 2,
            **FEATURES,
            "proj_size": 4,
            "readout": "last",
            "num_outputs": 1,
            "names": rnn_names("lstm", "fc"),
        },
    ),
    "F7-last": Case(
        tutorial,
        "LSTMCellLoop",
        {"input_size": 3, "hidden_size": 6, "num_classes": 3},
        {"family": "F7", "cell": "lstm", **FEATURES, "readout": "last", **CLASSES, "names": rnn_names("cell", "fc")},
    ),
    "F9-last": Case(
        tutorial,
        "ChoGRU",
        {"input_size": 3, "hidden_size": 6, "num_classes": 3},
        {
            "family": "F9",
            "cell": "gru",
            **FEATURES,
            "readout": "last",
            **CLASSES,
            "names": {"prefixes": {"": "rnn."}, "renames": {"W_y": "head.weight", "b_y": "head.bias"}},
        },
        inputs="sequence",
    ),
    "lstm-mean": Case(
        stream_modules,
        "PooledRNN",
        {"cell": "lstm", "input_size": 3, "hidden_size": 6, "num_classes": 3, "pool": "mean"},
        {"cell": "lstm", **FEATURES, "readout": "mean", **CLASSES, "names": rnn_names("rnn", "fc")},
    ),
    "gru-max": Case(
        stream_modules,
        "PooledRNN",
        {"cell": "gru", "input_size": 3, "hidden_size": 6, "num_classes": 3, "pool": "max"},
        {"cell": "gru", **FEATURES, "readout": "max", **CLASSES, "names": rnn_names("rnn", "fc")},
    ),
}


def user_model(case: Case) -> Any:
    """The user's module with weights that are nobody's defaults (non-zero biases too)."""
    torch.manual_seed(0)
    if case.cls == "ChoGRU":
        model = tutorial.ChoGRU(**case.kwargs)
        rng = np.random.default_rng(1)
        for name, array in model.params().items():
            setattr(model, name, array + rng.normal(0, 0.3, array.shape))
        return model
    model = getattr(case.module, case.cls)(**case.kwargs)
    for p in model.parameters():
        nn.init.uniform_(p, -0.6, 0.6)
    return model.eval()


def export_case(case_id: str, folder: Path) -> tuple[Any, Path]:
    case = CASES[case_id]
    model = user_model(case)
    if case.cls == "ChoGRU":
        checkpoint = folder / "cho.npz"
        np.savez(checkpoint, **model.params())
    else:
        checkpoint = folder / "model.pt"
        torch.save(model.state_dict(), checkpoint)
    spec = {
        "name": case_id.lower(),
        **case.spec,
        "max_length": MAX_LENGTH,
        "reference": {"source": case.module.__file__, "class": case.cls, "kwargs": case.kwargs, "inputs": case.inputs},
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    return model, export_checkpoint(checkpoint, folder / "spec.json", folder / "repo", batches=8)


def alone(case: Case, model: Any, seq: np.ndarray) -> np.ndarray:
    """The user's module on one whole, unpadded sequence: ``[O]`` or, per step, ``[T, O]``."""
    if case.cls == "ChoGRU":
        return np.asarray(model.forward(seq.astype(np.float64)))
    with torch.no_grad():
        out = model(torch.from_numpy(seq)[None])[0].numpy()
    return out if case.spec["task"] == "tagging" else out.reshape(-1)


def chunkings(
    rng: np.random.Generator, input_shape: tuple[int, ...], dtype: Any = np.float32, high: int = 0
) -> list[list[np.ndarray]]:
    """Streams as a client sends them: one step at a time, all at once, and cut at
    random points; lengths from 1 to well past the model's max length."""

    def steps(n: int) -> np.ndarray:
        if high:
            return rng.integers(1, high, size=(n, *input_shape)).astype(dtype)
        return rng.standard_normal((n, *input_shape)).astype(dtype)

    streams = [[steps(1) for _ in range(13)], [steps(MAX_LENGTH)], [steps(1)]]
    for length in (2, 7, 19, 30):
        sequence = steps(length)
        cuts = sorted({int(c) for c in rng.integers(1, length, size=4)})
        bounds = [0, *cuts, length]
        pieces = [sequence[a:b] for a, b in itertools.pairwise(bounds)]
        streams.append([p for piece in pieces for p in np.array_split(piece, -(-len(piece) // MAX_LENGTH))])
    return streams


def serve(
    run: streaming.StreamRunner, state_size: int, streams: list[list[np.ndarray]], per_step: bool, pad: Any = 0
) -> list[list[np.ndarray]]:
    """Every unfinished stream sends its next chunk each round; the chunks are batched
    (in alternating row order), padded to the longest, and each row's state kept."""
    states = np.zeros((len(streams), state_size), np.float32)
    answers: list[list[np.ndarray]] = [[] for _ in streams]
    for k in range(max(len(s) for s in streams)):
        rows = [i for i, s in enumerate(streams) if k < len(s)]
        rows = rows[::-1] if k % 2 else rows
        chunks = [streams[i][k] for i in rows]
        lengths = np.array([len(c) for c in chunks], np.int64)
        x = np.full((len(rows), int(lengths.max()), *chunks[0].shape[1:]), pad, dtype=chunks[0].dtype)
        for row, chunk in enumerate(chunks):
            x[row, : len(chunk)] = chunk
        out, states[rows] = run(x, lengths, states[rows])
        for row, i in enumerate(rows):
            answers[i].append(out[row, : lengths[row]] if per_step else out[row])
            if per_step:
                assert not out[row, lengths[row] :].any()  # zeros past the chunk's length
    return answers


def assert_streams_match(
    streams: list[list[np.ndarray]], answers: list[list[np.ndarray]], whole: Any, per_step: bool
) -> None:
    """Per step: the chunks' answers, concatenated, are the whole sequence's; otherwise
    each chunk's answer is that of the sequence up to its end (the last: the whole's)."""
    for chunks, got in zip(streams, answers, strict=True):
        sequence = np.concatenate(chunks)
        if per_step:
            assert np.abs(np.concatenate(got) - whole(sequence)).max() <= TOLERANCE, len(sequence)
            continue
        end = 0
        for chunk, answer in zip(chunks, got, strict=True):
            end += len(chunk)
            assert np.abs(answer - whole(sequence[:end])).max() <= TOLERANCE, (len(sequence), end)


@pytest.mark.parametrize("case_id", list(CASES))
def test_chunked_streams_answer_as_the_users_module_on_the_whole_sequence(case_id: str, tmp_path: Path) -> None:
    case = CASES[case_id]
    model, entry = export_case(case_id, tmp_path)
    meta = json.loads((entry / "model.json").read_text())
    per_step = case.spec["task"] == "tagging"
    section = meta["streaming"]
    assert section["formats"] == {"onnx": "stream.onnx", "torchscript": "stream.pt"}
    assert section["per_step"] == per_step
    assert (section["input"], section["lengths"], section["state_in"], section["output"], section["state_out"]) == (
        "input",
        "lengths",
        "state_in",
        "output",
        "state_out",
    )
    assert section["state_size"] == sum(s["size"] for s in meta["stream_state_layout"])
    assert set(meta["provenance"]["files_sha256"]) >= {"stream.onnx", "stream.pt"}
    parity = json.loads((entry / "parity.json").read_text())["streaming"]
    assert set(parity["max_abs_diff"]) == {"stream eager", "stream onnx", "stream torchscript"}
    assert parity["reference"].startswith(f"user module {Path(case.module.__file__).name}:{case.cls}")

    streams = chunkings(np.random.default_rng(7), (3,))
    for runtime in ("onnx", "torchscript"):
        run = streaming.load_stream_runner(entry, runtime)
        answers = serve(run, section["state_size"], streams, per_step)
        assert_streams_match(streams, answers, lambda seq: alone(case, model, seq), per_step)


def seqserve_model(spec: ModelSpec) -> SequenceModel:
    torch.manual_seed(0)
    model = SequenceModel(spec)
    for p in model.parameters():
        nn.init.uniform_(p, -0.5, 0.5)
    return model.eval()


def test_text_model_with_mlp_layer_norm_and_concatenated_input_mean_streams(tmp_path: Path) -> None:
    """F4's parts in one direction: embedding, input MLP, LayerNorm, masked mean, the
    input's mean concatenated, an MLP head; against seqserve's reference."""
    tokenizer = Tokenizer(vocabulary=("<pad>", "<unk>", *"abcdefgh"))
    spec = ModelSpec(
        name="text",
        task="classification",
        cell="lstm",
        num_layers=2,
        hidden_size=6,
        input_kind="text",
        embedding_dim=5,
        tokenizer=tokenizer,
        input_mlp=(7,),
        layer_norm=True,
        concat_input_mean=True,
        readout="mean",
        head_hidden=5,
        num_outputs=2,
        labels=("no", "yes"),
        max_length=MAX_LENGTH,
    )
    model = seqserve_model(spec)
    entry = export_model(model, tmp_path, batches=8)
    reference = ReferenceModel(model)
    streams = chunkings(np.random.default_rng(3), (), np.int64, high=len(tokenizer.vocabulary))
    state_size = json.loads((entry / "model.json").read_text())["streaming"]["state_size"]
    for runtime in ("onnx", "torchscript"):
        answers = serve(
            streaming.load_stream_runner(entry, runtime), state_size, streams, False, pad=tokenizer.padding_id
        )
        assert_streams_match(streams, answers, lambda seq: reference(torch.from_numpy(seq)[None])[0].numpy(), False)


def test_the_sunspots_demo_forecaster_streams_with_its_scaling_in_the_graph(tmp_path: Path) -> None:
    """The unidirectional demo's architecture (sunspots: LSTM, last step, input and
    output normalisation), small; the BiLSTM demos (vowels, names) cannot stream."""
    spec = ModelSpec(
        name="sunspots",
        task="regression",
        cell="lstm",
        hidden_size=6,
        input_size=1,
        readout="last",
        num_outputs=1,
        output_names=("next",),
        max_length=MAX_LENGTH,
        input_normalization=Normalization((80.0,), (60.0,)),
        output_normalization=Normalization((80.0,), (60.0,)),
    )
    model = seqserve_model(spec)
    entry = export_model(model, tmp_path, batches=8)
    reference = ReferenceModel(model)
    streams = [[80 + 60 * c for c in chunks] for chunks in chunkings(np.random.default_rng(5), (1,))]
    run = streaming.load_stream_runner(entry, "onnx")
    answers = serve(run, json.loads((entry / "model.json").read_text())["streaming"]["state_size"], streams, False)
    assert_streams_match(streams, answers, lambda seq: reference(torch.from_numpy(seq)[None])[0].numpy(), False)


def test_a_bidirectional_model_gets_no_streaming_section_and_says_why(tmp_path: Path) -> None:
    spec = ModelSpec(
        name="bi",
        task="classification",
        cell="gru",
        bidirectional=True,
        hidden_size=6,
        input_size=3,
        num_outputs=2,
        labels=("no", "yes"),
        max_length=MAX_LENGTH,
    )
    entry = export_model(seqserve_model(spec), tmp_path, batches=4)
    meta = json.loads((entry / "model.json").read_text())
    assert meta["streaming"] is None and meta["streaming_unavailable"].startswith("bidirectional")
    assert sorted(p.name for p in entry.iterdir()) == ["model.json", "model.onnx", "model.pt", "parity.json"]
    with pytest.raises(ValueError, match="cannot stream: bidirectional"):
        streaming.load_stream_runner(entry)


def test_a_stream_graph_that_drops_its_state_is_refused_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = streaming.write_torchscript

    def write_forgetful(module: Any, path: Path) -> None:
        class Forgetful(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner, self.spec, self.layout = module, module.spec, module.layout

            def forward(self, x: torch.Tensor, lengths: torch.Tensor, state: torch.Tensor) -> Any:
                return self.inner(x, lengths, torch.zeros_like(state))  # every chunk starts a new stream

        real(Forgetful(), path)  # type: ignore[arg-type]

    monkeypatch.setattr(streaming, "write_torchscript", write_forgetful)
    spec = ModelSpec(
        name="gru",
        task="classification",
        cell="gru",
        hidden_size=6,
        input_size=3,
        readout="max",
        num_outputs=2,
        labels=("no", "yes"),
        max_length=MAX_LENGTH,
    )
    with pytest.raises(ParityError) as refused:
        export_model(seqserve_model(spec), tmp_path, batches=4)
    message = str(refused.value)
    assert "graphs: stream torchscript)" in message and "chunk" in message and "ending at step" in message
    assert list(tmp_path.iterdir()) == []


def test_cli_export_says_what_it_wrote_for_streams(tmp_path: Path) -> None:
    export_case("F7-last", tmp_path)  # a checkpoint and spec to export again, through the command
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "export",
            str(tmp_path / "model.pt"),
            "--spec",
            str(tmp_path / "spec.json"),
            "--repository",
            str(tmp_path / "cli"),
            "--parity-batches",
            "4",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "streaming: stream.onnx, stream.pt (state of 12 floats; chunked parity over 6 streams" in result.stdout
    assert result.stderr.count("\n") <= 2, result.stderr  # the exporters' noise stays out of the user's terminal


def test_a_model_part_or_spec_field_without_a_streaming_form_is_not_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Something the stream graph does not reproduce means no streaming, not a wrong stream."""
    spec = ModelSpec(
        name="m",
        task="classification",
        cell="lstm",
        hidden_size=6,
        input_size=3,
        layer_norm=True,
        num_outputs=2,
        labels=("no", "yes"),
    )
    model = seqserve_model(spec)
    assert streaming.unstreamable_reason(model) is None
    model.attention = nn.Linear(6, 1)  # a part added to the architecture later
    assert streaming.unstreamable_reason(model) == "it has layers (attention) the stream graph does not reproduce"
    monkeypatch.setattr(streaming, "KNOWN_SPEC_FIELDS", streaming.KNOWN_SPEC_FIELDS - {"layer_norm"})
    assert streaming.unstreamable_reason(seqserve_model(spec)) == "spec field(s) layer_norm have no streaming form"
