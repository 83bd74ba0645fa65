"""Streams end to end, as a user gets there: their own modules (the tutorials' shapes), a checkpoint each,
`seqserve export CKPT --module FILE.py:Class` with no spec into one repository, a server over it, and
chunks over /v1 and tritonclient's V2 sequence parameters. Every chunk's answer must equal the user's
module run on the whole sequence so far, alone and unpadded (for a per-step model: its outputs at the
chunk's steps), for one-step chunks, everything at once and random cuts, many streams at once so that
chunks of several streams and lengths share batches.

The users' modules are not trained: each is built with a fixed seed and tiny sizes. The sunspots demo is
trained the way its README says, with `--quick` (seconds), and exported with its spec.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from torch import nn

from models.cli import main as seqserve_offline
from tests.models import byo_modules, stream_modules, tutorial
from tests.service.api.conftest import Server, run_server, sample_value
from tests.service.streams import user_models
from tests.service.streams.client import (
    TOLERANCE,
    SendChunk,
    StreamJob,
    check_random_chunkings,
    check_stream,
    check_streams_in_rounds,
    post_chunk,
    random_chunking,
    random_sequence,
    triton_sender,
    v1_sender,
)
from tests.service.streams.graphs import StreamEntry

ROOT = Path(__file__).resolve().parents[3]
MAX_LENGTH = 16
CHARS = ["<pad>", "<unk>", *"abcdefghij"]  # a character model's vocabulary: one token per character
WORDS = {"<pad>": 0, "<unk>": 1, "The": 2, "the": 3, "cat": 4, "sat": 5, "on": 6, "mat": 7, "café": 8, "Dog": 9}
TYPED = "abcdefghij" * 3 + " zAé"  # what the character model's users type
SPOKEN = [*list(WORDS)[2:], "dog", "zebra"]  # what the word model's users send: known words, case kept, and others


@dataclass(frozen=True)
class UserCase:
    """A user's module, how they call it on one sequence, and what its answer means to them."""

    source: ModuleType
    cls: str
    kwargs: dict[str, Any]
    calls: str = "batch"
    """batch: module(x[None]); lengths: module(x[None], [T]); sequence: module(x); time_major: module(x[:, None]);
    numpy: module.forward(x), a NumPy module saved as .npz."""
    answer: str = "values"
    """values or probabilities (served as they are), logits (served as softmax probabilities), log_probs
    (served as exp)."""
    features: int | None = 3
    """None: a text model."""
    words: bool = False
    """A text model over WORDS (a word tokenizer), not CHARS."""
    per_step: bool = False
    """An answer per step (a tagger), not one per sequence."""
    cli: bool = False
    """Exported by running the `seqserve` command, not its Python entry."""


CASES: dict[str, UserCase] = {
    "f2-forecaster": UserCase(
        tutorial, "LSTMForecaster", {"input_size": 3, "hidden_size": 5, "num_layers": 2, "output_size": 1}
    ),
    "f3-gru": UserCase(
        tutorial,
        "GRUClassifier",
        {"input_size": 3, "hidden_size": 5, "num_layers": 2, "num_classes": 3, "bidirectional": False},
        answer="logits",
    ),
    "f5-tagger": UserCase(
        stream_modules,
        "LSTMTagger",
        {"input_size": 3, "hidden_size": 5, "num_layers": 2, "num_tags": 4},
        answer="logits",
        per_step=True,
    ),
    "f6-projected": UserCase(
        stream_modules, "ProjectedLSTMForecaster", {"input_size": 3, "hidden_size": 6, "proj_size": 3, "num_layers": 2}
    ),
    "f7-cell-loop": UserCase(
        tutorial, "LSTMCellLoop", {"input_size": 3, "hidden_size": 5, "num_classes": 3}, answer="logits"
    ),
    "f7-time-major": UserCase(byo_modules, "TimeMajorCell", {}, calls="time_major", answer="logits", features=4),
    "f9-cho": UserCase(
        tutorial,
        "ChoGRU",
        {"input_size": 3, "hidden_size": 5, "num_classes": 3, "seed": 1},
        calls="numpy",
        answer="logits",
    ),
    "f9-cho-concat": UserCase(byo_modules, "ChoGRUConcat", {}, calls="numpy", cli=True),
    "lstm-mean": UserCase(
        stream_modules,
        "PooledRNN",
        {"cell": "lstm", "input_size": 3, "hidden_size": 5, "num_classes": 3, "pool": "mean"},
        answer="logits",
    ),
    "gru-max": UserCase(
        stream_modules,
        "PooledRNN",
        {"cell": "gru", "input_size": 3, "hidden_size": 5, "num_classes": 3, "pool": "max"},
        answer="logits",
    ),
    "gru-log-softmax": UserCase(byo_modules, "LogSoftmaxGRU", {}, answer="log_probs"),
    "text-words": UserCase(
        byo_modules,
        "TextClassifier",
        {"vocab_size": len(WORDS)},
        calls="lengths",
        answer="logits",
        features=None,
        words=True,
    ),
    "encoder-per-step": UserCase(user_models, "SequenceEncoder", {}, per_step=True),
    "forecast-per-step": UserCase(user_models, "StepForecaster", {}, per_step=True),
    "gru-softmax": UserCase(user_models, "SoftmaxClassifier", {}),
    "lstm-sigmoid": UserCase(user_models, "SigmoidDetector", {}),
    "text-tagger": UserCase(
        byo_modules,
        "LSTMTagger",
        {"vocab_size": len(CHARS)},
        calls="sequence",
        answer="log_probs",
        features=None,
        per_step=True,
    ),
}
BIDIRECTIONAL = UserCase(
    tutorial, "BiLSTMClassifier", {"input_size": 3, "hidden_size": 4, "num_layers": 1, "num_classes": 2}
)


def user_module(case_id: str, case: UserCase) -> Any:
    """The user's module with weights nobody would default to (biases too); a NumPy module as built."""
    if case.calls == "numpy":
        obj = getattr(case.source, case.cls)(**case.kwargs)
        rng = np.random.default_rng(sum(map(ord, case_id)))
        for name, value in vars(obj).items():
            if isinstance(value, np.ndarray):
                setattr(obj, name, value + rng.normal(0, 0.3, value.shape))
        return obj
    torch.manual_seed(sum(map(ord, case_id)))
    module = getattr(case.source, case.cls)(**case.kwargs)
    for p in module.parameters():
        nn.init.uniform_(p, -0.6, 0.6)
    return module.eval()


def save_checkpoint(case_id: str, module: Any, folder: Path) -> Path:
    if isinstance(module, nn.Module):
        path = folder / f"{case_id}.pt"
        torch.save(module.state_dict(), path)
        return path
    path = folder / f"{case_id}.npz"
    params = {k: v for k, v in vars(module).items() if isinstance(v, np.ndarray)}
    np.savez(path, **params)
    return path


def user_char_ids(text: str) -> np.ndarray:
    """The user's own tokenizer: a character's index in their vocabulary, <unk> otherwise."""
    return np.array([CHARS.index(c) if c in CHARS[2:] else 1 for c in text], dtype=np.int64)


def user_word_ids(words: list[str]) -> np.ndarray:
    """The user's word tokenizer on the words so far: case kept, unknown words to <unk>."""
    return np.array([WORDS.get(word, WORDS["<unk>"]) for word in words], dtype=np.int64)


def user_sequence(entry: StreamEntry, length: int, rng: np.random.Generator) -> Any:
    """A random sequence as the user sends it: steps of features (yearly sunspot counts for the demo),
    characters, or words (sent joined by spaces)."""
    if entry.name == "sunspots":
        return rng.uniform(0, 250, (length, 1)).round(1).tolist()
    if entry.name in CASES and CASES[entry.name].words:
        return [SPOKEN[int(i)] for i in rng.integers(0, len(SPOKEN), length)]
    if entry.features is None:  # the vocabulary's characters, and some it lacks (spaces kept as they are)
        return "".join(TYPED[int(i)] for i in rng.integers(0, len(TYPED), length))
    return random_sequence(entry, length, rng)


def alone(case: UserCase, module: Any, sequence: np.ndarray) -> np.ndarray:
    """The user's module on one whole, unpadded sequence, called their way: [O], or [T, O] per step."""
    if case.calls == "numpy":
        return np.asarray(module.forward(sequence.astype(np.float64)))
    x = torch.from_numpy(sequence)
    with torch.no_grad():
        if case.calls == "sequence":
            return module(x).numpy().astype(np.float64)
        if case.calls == "time_major":
            out = module(x[:, None])
        elif case.calls == "lengths":
            out = module(x[None], torch.tensor([len(sequence)]))
        else:
            out = module(x[None])
    return out[0].numpy().astype(np.float64)


def served(case: UserCase, raw: np.ndarray) -> np.ndarray:
    """What the user expects back for their module's answer: values as they are, probabilities otherwise."""
    if case.answer == "logits":
        e = np.exp(raw - raw.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if case.answer == "log_probs":
        return np.exp(raw)
    return raw


def seqserve(*argv: str) -> str:
    """The `seqserve` command, as a user runs it; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "seqserve", *argv], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class SunspotsForecaster:
    """The sunspots demo's model as its user reads it from the checkpoint and spec: yearly counts scaled by
    the training mean and std, an LSTM, a Linear on the last step, scaled back."""

    def __init__(self, folder: Path) -> None:
        spec = json.loads((folder / "sunspots.spec.json").read_text())
        state = torch.load(folder / "sunspots.pt")
        self.lstm = nn.LSTM(1, spec["hidden_size"], batch_first=True)
        self.lstm.load_state_dict({k.removeprefix("rnn."): v for k, v in state.items() if k.startswith("rnn.")})
        self.fc = nn.Linear(spec["hidden_size"], 1)
        self.fc.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
        self.x_mean, self.x_std = (spec["input_normalization"][k][0] for k in ("mean", "std"))
        self.y_mean, self.y_std = (spec["output_normalization"][k][0] for k in ("mean", "std"))

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        x = torch.from_numpy((np.asarray(counts, dtype=np.float64) - self.x_mean) / self.x_std).float()
        with torch.no_grad():
            out, _ = self.lstm(x[None])
            y = self.fc(out[:, -1]).double().numpy()[0]
        return y * self.y_std + self.y_mean


def export(checkpoint: Path, case: UserCase, repository: Path, name: str, *extra: str) -> None:
    """`seqserve export CKPT --module FILE.py:Class` with no spec: the command itself, or its Python entry."""
    argv = [
        "export",
        str(checkpoint),
        "--module",
        f"{case.source.__file__}:{case.cls}",
        "--module-kwargs",
        json.dumps(case.kwargs),
        "--repository",
        str(repository),
        "--name",
        name,
        "--max-length",
        str(MAX_LENGTH),
        "--parity-batches",
        "4",
        *extra,
    ]
    if case.cli:
        seqserve(*argv)
    else:
        assert seqserve_offline(argv[0], argv[1:]) == 0


@dataclass(frozen=True)
class ExportedRepository:
    path: Path
    entries: dict[str, StreamEntry]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportedRepository:
    folder = tmp_path_factory.mktemp("user-checkpoints")
    repository = folder / "repository"
    (folder / "chars.txt").write_text("\n".join(CHARS) + "\n")
    (folder / "words.json").write_text(json.dumps(WORDS))
    entries: dict[str, StreamEntry] = {}
    # The sunspots demo as its README tells it: `seqserve train --demo sunspots --quick` (run while the users'
    # modules export), then `seqserve export`.
    training = subprocess.Popen(
        [sys.executable, "-m", "seqserve", "train", "--demo", "sunspots", "--quick", "--out", str(folder / "demo")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        export_users_modules(folder, repository, entries)
        _, errors = training.communicate(timeout=300)
    finally:
        if training.poll() is None:  # the exports failed: end the training this test started
            training.kill()
            training.wait(timeout=30)
    assert training.returncode == 0, errors
    demo = ["export", str(folder / "demo" / "sunspots.pt"), "--repository", str(repository), "--parity-batches", "4"]
    assert seqserve_offline(demo[0], demo[1:]) == 0
    entries["sunspots"] = StreamEntry(
        name="sunspots",
        path=repository / "sunspots" / "1",
        features=1,
        vocabulary=0,
        reference=SunspotsForecaster(folder / "demo"),
        per_step=False,
        task="regression",
    )
    return ExportedRepository(repository, entries)


def export_users_modules(folder: Path, repository: Path, entries: dict[str, StreamEntry]) -> None:
    """Each case's module saved and exported with no spec; the bidirectional one beside them."""
    char_flags = ("--vocab", str(folder / "chars.txt"), "--tokenizer", "char")
    word_flags = ("--vocab", str(folder / "words.json"), "--tokenizer", "word")
    for case_id, case in CASES.items():
        module = user_module(case_id, case)
        export(
            save_checkpoint(case_id, module, folder),
            case,
            repository,
            case_id,
            *((word_flags if case.words else char_flags) if case.features is None else ()),
        )
        meta = json.loads((repository / case_id / "1" / "model.json").read_text())

        def reference(sequence: np.ndarray, case: UserCase = case, module: Any = module) -> np.ndarray:
            raw = alone(case, module, sequence)
            return served(case, raw if case.per_step else raw.reshape(-1))

        entries[case_id] = StreamEntry(
            name=case_id,
            path=repository / case_id / "1",
            features=case.features,
            vocabulary=len(CHARS),
            reference=reference,
            per_step=case.per_step,
            task=meta["task"],
            encode=(user_word_ids if case.words else user_char_ids) if case.features is None else None,
        )
    bidirectional = user_module("bidirectional", BIDIRECTIONAL)
    export(save_checkpoint("bidirectional", bidirectional, folder), BIDIRECTIONAL, repository, "bidirectional")


@pytest.fixture(scope="module")
def server(exported: ExportedRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(exported.path, "--max-delay-ms", "20", log_dir=tmp_path_factory.mktemp("exported-logs")) as running:
        yield running


def test_every_unidirectional_export_has_a_stream_graph(exported: ExportedRepository) -> None:
    for name, entry in exported.entries.items():
        meta = json.loads((entry.path / "model.json").read_text())
        section = meta.get("streaming")
        assert section, f"{name}: no streaming section"
        assert section["per_step"] == entry.per_step, name
        for graph in section["formats"].values():
            if graph:
                assert (entry.path / graph).is_file(), (name, graph)
        parity = json.loads((entry.path / "parity.json").read_text())
        assert max(parity["streaming"]["max_abs_diff"].values()) <= TOLERANCE, (name, parity["streaming"])
    bidirectional = json.loads((exported.path / "bidirectional" / "1" / "model.json").read_text())
    assert not bidirectional.get("streaming")
    # One output per step is a value per step, not a tag over one label.
    forecast = json.loads((exported.path / "forecast-per-step" / "1" / "model.json").read_text())
    assert (forecast["task"], forecast.get("labels")) == ("regression", None)


def test_the_metadata_says_which_models_stream(server: Server, exported: ExportedRepository) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name in [*exported.entries, "bidirectional"]:
            reply = client.get(f"/v1/models/{name}")
            assert reply.status_code == 200, reply.text
            assert reply.json()["streaming"] is (name != "bidirectional"), name


def test_random_chunkings_over_v1_and_v2_equal_the_users_module(server: Server, exported: ExportedRepository) -> None:
    """Every model: a stream of one-step chunks, one of everything at once, and random cuts (some longer
    than max_length, which bounds a chunk, not a stream), half over /v1 and half through tritonclient (one
    of them asking for binary outputs), all at once so that chunks of different streams and lengths are
    batched together."""
    rng = np.random.default_rng(2026)
    jobs: list[StreamJob] = []
    v2_clients: list[triton.InferenceServerClient] = []
    local = threading.local()  # a tritonclient.http client serves the thread that made it: one per thread

    def v2_sender(entry: StreamEntry, binary: bool) -> SendChunk:
        def send(*chunk: Any) -> np.ndarray:
            if not hasattr(local, "client"):
                local.client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
                v2_clients.append(local.client)
            return triton_sender(local.client, entry, binary=binary)(*chunk)

        return send

    with httpx.Client(base_url=server.url, timeout=60) as v1:
        for name, entry in exported.entries.items():
            for i in range(4):
                length = int(rng.integers(1, MAX_LENGTH + 1)) if i == 1 else int(rng.integers(2, 2 * MAX_LENGTH + 8))
                sequence = user_sequence(entry, length, rng)
                sizes = random_chunking(length, rng, largest=MAX_LENGTH, kind=min(i, 2))
                send = v2_sender(entry, binary=i == 3) if i % 2 else v1_sender(v1, entry)
                jobs.append(StreamJob(entry, send, f"{name}-{i}", sequence, sizes))
        before = sample_value(server.metrics(), "seqserve_batch_size_count")
        try:
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                worst = check_streams_in_rounds(jobs, pool)
        finally:
            for client in v2_clients:
                client.close()
    assert max(worst.values()) <= TOLERANCE, {k: v for k, v in worst.items() if v > TOLERANCE}
    batches = sample_value(server.metrics(), "seqserve_batch_size_count") - before
    chunks = sum(len(job.sizes) for job in jobs)
    assert batches < chunks, f"no two of {chunks} chunks ever shared a batch"
    assert "stream graph" not in server.log(), server.log()  # no stream graph fell back to the other file


# A cross-section for TorchScript: per step, projections, NumPy's GRU, max pooling, words, characters per
# step, and the demo's normalisation in and out.
TORCHSCRIPT_MODELS = ["f5-tagger", "f6-projected", "f9-cho-concat", "gru-max", "text-words", "text-tagger", "sunspots"]


def test_torchscript_stream_graphs_answer_the_same(exported: ExportedRepository, tmp_path: Path) -> None:
    """The exporter's `stream.pt` files, served by a server that prefers TorchScript: one stream per model,
    cut at random, all at once."""
    rng = np.random.default_rng(99)
    jobs = []
    for name in TORCHSCRIPT_MODELS:
        entry = exported.entries[name]
        shutil.copytree(entry.path, tmp_path / "repository" / name / "1")
        length = int(rng.integers(2, 2 * MAX_LENGTH + 8))
        jobs.append(
            (entry, f"ts-{name}", user_sequence(entry, length, rng), random_chunking(length, rng, MAX_LENGTH, 2))
        )
    with (
        run_server(
            tmp_path / "repository", "--runtime", "torchscript", "--max-delay-ms", "5", log_dir=tmp_path
        ) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
        concurrent.futures.ThreadPoolExecutor(8) as pool,
    ):
        for name in TORCHSCRIPT_MODELS:
            [version] = client.get(f"/v1/models/{name}").json()["versions"]
            assert version["runtime"] == "torchscript", (name, version)
        worst = list(pool.map(lambda job: check_stream(job[0], v1_sender(client, job[0]), *job[1:]), jobs))
        assert "stream graph" not in server.log(), server.log()  # no stream graph fell back to the other file
    assert max(worst) <= TOLERANCE, worst


def test_the_checking_helper_on_the_demo_shaped_model(server: Server, exported: ExportedRepository) -> None:
    assert check_random_chunkings(server.url, exported.entries["sunspots"], streams=3, longest=30, seed=3) <= TOLERANCE


def test_a_bidirectional_export_refuses_a_stream_saying_why(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        reply = post_chunk(client, "bidirectional", "s1", [[0.1, 0.2, 0.3]], start=True)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["code"] == "streaming_unsupported"
        assert "bidirectional" in reply.json()["error"]["message"]
        v2 = client.post(
            "/v2/models/bidirectional/infer",
            json={
                "inputs": [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [0.1, 0.2, 0.3]}],
                "parameters": {"sequence_id": 7, "sequence_start": True},
            },
        )
        assert v2.status_code == 400 and "bidirectional" in v2.json()["error"], v2.text
