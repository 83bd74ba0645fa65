"""Export with no spec: the user's module, their checkpoint, and nothing else.

Each case is a user's module (the shapes of ``byo_modules.py``, written for
this, and the F1-F9 modules of ``tutorial.py``) exported with ``--module`` only.
The test then runs the written ``model.onnx`` and ``model.pt`` itself on padded
mixed-length batches (lengths 1 and max included), and the server over HTTP,
against the user's module run on each sequence alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.checkpoint_export import ModuleExport, export_module
from models.parity import TOLERANCE
from models.spec import UserModule
from models.usermodule import UserModuleError
from models.vocab import load_tokenizer
from service.model_json import TokenizerJson
from service.tokenizer import CharTokenizer
from tests.models import byo_modules, tutorial
from tests.models.test_families import CASES as FAMILY_CASES
from tests.models.test_families import make_user_model
from tests.service.api.conftest import run_server

ROOT = Path(__file__).resolve().parents[2]
BYO = str(Path(byo_modules.__file__).resolve())
TUTORIAL = str(Path(tutorial.__file__).resolve())
MAX_LENGTH = 9
LENGTHS = [MAX_LENGTH, 1, 4, 7, 2, 1, MAX_LENGTH - 1]

# The user's own word vocabulary and tokenizer, case-sensitive (as theirs is).
WORDS = {"<pad>": 0, "<unk>": 1, "The": 2, "the": 3, "cat": 4, "sat": 5, "on": 6, "mat": 7, "café": 8, "Dog": 9}
CHARS = ["<pad>", "<unk>", *"abcdefghij"]


def user_word_ids(text: str) -> list[int]:
    """The user's tokenizer: whitespace split, case kept, unknown words to <unk>."""
    return [WORDS.get(word, WORDS["<unk>"]) for word in text.split()]


def user_char_ids(text: str) -> list[int]:
    return [CHARS.index(c) if c in CHARS[2:] else 1 for c in text.lower()]


@dataclass(frozen=True)
class Case:
    source: str
    cls: str
    kwargs: dict[str, Any]
    inputs: str = "batch"
    """How the user runs their module on one sequence: batch, batch_and_lengths, time_major, sequence."""
    text: str | None = None
    """``word`` or ``char``: the user's vocabulary and tokenizer."""
    features: int = 3
    equal_length: bool = False
    settled: tuple[str, ...] = ()
    """Phrases export must print about what it settled."""
    extra: dict[str, Any] = field(default_factory=dict)


CASES: dict[str, Case] = {
    "text-gelu-layernorm": Case(
        BYO,
        "TextClassifier",
        {"vocab_size": 12},
        "batch_and_lengths",
        text="word",
        settled=(
            "input layers ['linear:12', 'gelu', 'linear:6']",
            "head ['linear:7', 'gelu', 'layernorm', 'linear:3']",
            "mean over time",
        ),
    ),
    "flip-no-head": Case(
        BYO, "FlipBiLSTMFeatures", {}, features=4, settled=("over the flipped input", "per step", "no head")
    ),
    "cho-concat": Case(BYO, "ChoGRUConcat", {}, "sequence", settled=("concat([x, h])", "final state h")),
    "time-major-cell": Case(BYO, "TimeMajorCell", {}, "time_major", features=4, settled=("time first", "LSTMCell")),
    "log-softmax": Case(BYO, "LogSoftmaxGRU", {}, settled=("log_softmax", "relu applied as a function")),
    "tutorial-tagger": Case(
        BYO, "LSTMTagger", {}, "sequence", text="word", settled=("unbatched", "every step", "applies log_softmax")
    ),
    "device-global": Case(BYO, "Forecaster", {}, features=2, settled=("answer: 1 value(s)",)),
    "attention": Case(BYO, "AttentionLSTM", {}, equal_length=True, settled=()),
}
for family_id, family in FAMILY_CASES.items():
    CASES[family_id] = Case(
        TUTORIAL,
        family.cls,
        family.kwargs,
        family.inputs,
        text="char" if "F4" in family_id else None,
        features=int(family.kwargs.get("input_size", 3)),
        extra={"family": family.family},
    )


def make_module(case_id: str) -> Any:
    case = CASES[case_id]
    if case.source == TUTORIAL:
        return make_user_model(FAMILY_CASES[case_id])
    obj = getattr(byo_modules, case.cls)(**case.kwargs)
    if isinstance(obj, nn.Module):
        torch.manual_seed(sum(map(ord, case_id)))
        for p in obj.parameters():
            nn.init.uniform_(p, -0.5, 0.5)
        obj.eval()
    return obj


def save(case_id: str, obj: Any, folder: Path) -> Path:
    if isinstance(obj, nn.Module):
        path = folder / f"{case_id}.pt"
        torch.save(obj.state_dict(), path)
    elif hasattr(obj, "save"):
        path = folder / f"{case_id}.npz"
        obj.save(str(path))
    else:
        path = folder / f"{case_id}.npz"
        np.savez(path, **obj.params())
    return path


def alone(case: Case, obj: Any, seq: np.ndarray) -> np.ndarray:
    """The user's module on one unpadded sequence, called the way they call it."""
    if not isinstance(obj, nn.Module):
        return np.asarray(obj.forward(seq.astype(np.float64)))
    x = torch.from_numpy(seq)
    with torch.no_grad():
        if case.inputs == "time_major":
            out = obj(x[:, None])
        elif case.inputs == "batch_and_lengths":
            out = obj(x[None], torch.tensor([len(seq)]))
        elif case.inputs == "sequence":
            return obj(x).numpy().astype(np.float64)
        else:
            out = obj(x[None])
    return out[0].numpy().astype(np.float64)


@dataclass
class Exported:
    case: Case
    module: Any
    result: ModuleExport
    tokenize: Callable[[str], list[int]] | None


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    folder = tmp_path_factory.mktemp("zero-spec")
    torch.set_num_threads(1)
    (folder / "words.json").write_text(json.dumps(WORDS))
    (folder / "chars.txt").write_text("\n".join(CHARS) + "\n")
    done: dict[str, Exported] = {}
    for case_id, case in CASES.items():
        obj = make_module(case_id)
        checkpoint = save(case_id, obj, folder)
        tokenizer, tokenize = None, None
        if case.text == "word":
            tokenizer, tokenize = load_tokenizer(folder / "words.json", "word"), user_word_ids
        elif case.text == "char":
            tokenizer, tokenize = load_tokenizer(folder / "chars.txt", "char", lowercase=True), user_char_ids
        result = export_module(
            checkpoint,
            UserModule(case.source, case.cls, case.kwargs),
            folder / "repo",
            tokenizer=tokenizer,
            max_length=MAX_LENGTH,
            batches=6,
            given={"name": case_id.lower()},
        )
        done[case_id] = Exported(case, obj, result, tokenize)
    return done


def padded(case: Case, lengths: list[int], seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if case.text:
        vocabulary = len(WORDS) if case.text == "word" else len(CHARS)
        x: np.ndarray = rng.integers(1, vocabulary, size=(len(lengths), max(lengths))).astype(np.int64)
    else:
        x = rng.standard_normal((len(lengths), max(lengths), case.features)).astype(np.float32)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    return x, np.array(lengths, dtype=np.int64)


@pytest.mark.parametrize("case_id", [c for c in CASES if not CASES[c].equal_length])
def test_no_spec_export_is_exact_on_padded_batches(case_id: str, exported: dict[str, Exported]) -> None:
    entry = exported[case_id]
    case, path = entry.case, entry.result.path
    meta = json.loads((path / "model.json").read_text())
    assert meta["padding"] == "exact" and (path / "spec.json").is_file()
    if "family" in case.extra:
        assert meta["family"] == case.extra["family"]
    settled = " | ".join(entry.result.settled.settled)
    for phrase in case.settled:
        assert phrase in settled, settled
    x, n = padded(case, LENGTHS)
    onnx = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    served = {"onnx": onnx.run(None, {"input": x, "lengths": n})[0]}
    with torch.no_grad():
        served["torchscript"] = torch.jit.load(str(path / "model.pt"))(torch.from_numpy(x), torch.from_numpy(n)).numpy()
    per_step = meta["architecture"]["readout"] == "all"
    for graph, out in served.items():
        for i, length in enumerate(LENGTHS):
            want = alone(case, entry.module, x[i, :length])
            got = out[i, :length] if per_step else out[i]
            assert np.abs(got - want.reshape(got.shape)).max() <= TOLERANCE, (graph, length)


def test_a_module_no_family_fits_is_served_by_equal_lengths(exported: dict[str, Exported]) -> None:
    entry = exported["attention"]
    path = entry.result.path
    meta = json.loads((path / "model.json").read_text())
    assert meta["padding"] == "equal-length" and meta["graph"]["lengths"] is None
    assert "'attn' (MultiheadAttention)" in (entry.result.settled.reason or "")
    # torch traces attention with its batch size fixed in ONNX; the TorchScript graph holds.
    assert meta["formats"]["torchscript"] == "model.pt"
    runs: list[Callable[[np.ndarray], np.ndarray]] = [
        lambda x: torch.jit.load(str(path / "model.pt"))(torch.from_numpy(x)).detach().numpy()
    ]
    if meta["formats"]["onnx"]:
        session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
        runs.append(lambda x: session.run(None, {"input": x})[0])
    else:
        assert any(p.startswith("onnx") for p in meta["provenance"]["not_exported"])
    for length in (1, 5, MAX_LENGTH):
        x, _ = padded(entry.case, [length] * 3, seed=length)
        with torch.no_grad():
            outs = [run(x) for run in runs]
        for out in outs:
            for i in range(3):
                assert np.abs(out[i] - alone(entry.case, entry.module, x[i])).max() <= TOLERANCE


def served_expectation(meta: dict[str, Any], raw: np.ndarray) -> tuple[str, np.ndarray]:
    """What the server answers for the module's raw answer: the field and its values."""
    if meta["task"] == "regression":
        return "values", raw
    activation = meta["graph"]["output_activation"]
    if activation == "softmax":
        e = np.exp(raw - raw.max(axis=-1, keepdims=True))
        return "probabilities", e / e.sum(axis=-1, keepdims=True)
    return "probabilities", np.exp(raw) if activation == "exp" else raw


TEXTS = {
    "word": ["The cat sat on the mat", "Dog", "the  café\tsat  ", "THE Cat sat on le tapis", "mat mat mat mat"],
    "char": ["abc", "J", "Hello", "éa b", "abcdefghi"],
}


def test_the_server_answers_as_the_users_module(exported: dict[str, Exported], tmp_path: Path) -> None:
    repository = next(iter(exported.values())).result.path.parents[1]
    with run_server(repository, "--max-delay-ms", "5", log_dir=tmp_path) as server:
        for case_id, entry in exported.items():
            case = entry.case
            meta = json.loads((entry.result.path / "model.json").read_text())
            if case.text:
                assert entry.tokenize is not None
                inputs: list[Any] = TEXTS[case.text]
                sequences = [np.array(entry.tokenize(t), dtype=np.int64) for t in inputs]
            else:
                lengths = [3] * 4 if case.equal_length else LENGTHS
                x, n = padded(case, lengths, seed=11)
                sequences = [x[i, :length] for i, length in enumerate(n)]
                inputs = [s.tolist() for s in sequences]
            reply = httpx.post(f"{server.url}/v1/models/{meta['name']}/predict", json={"inputs": inputs}, timeout=60)
            assert reply.status_code == 200, (case_id, reply.text)
            outputs = reply.json()["outputs"]
            for seq, output in zip(sequences, outputs, strict=True):
                key, want = served_expectation(meta, alone(case, entry.module, seq))
                got = np.asarray(output[key], dtype=np.float64)
                assert np.abs(got - want.reshape(got.shape)).max() <= TOLERANCE, (case_id, len(seq))
            if meta["task"] == "regression" and not case.text and not case.equal_length:  # values over V2 too
                x, n = padded(case, LENGTHS, seed=11)
                body = {
                    "inputs": [
                        {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()},
                        {"name": "lengths", "shape": [len(n)], "datatype": "INT64", "data": n.tolist()},
                    ]
                }
                v2 = httpx.post(f"{server.url}/v2/models/{meta['name']}/infer", json=body, timeout=60)
                assert v2.status_code == 200, (case_id, v2.text)
                tensor = v2.json()["outputs"][0]
                values = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
                for i, length in enumerate(n):
                    want = alone(case, entry.module, x[i, :length])
                    got = values[i, :length] if values.ndim == 3 else values[i]
                    assert np.abs(got - want.reshape(got.shape)).max() <= TOLERANCE, (case_id, "v2", length)


def test_server_token_ids_equal_the_users_tokenizer(exported: dict[str, Exported]) -> None:
    for case_id in ("text-gelu-layernorm", "F4"):
        entry = exported[case_id]
        meta = json.loads((entry.result.path / "model.json").read_text())
        server = CharTokenizer(TokenizerJson(**meta["input"]["tokenizer"]))
        assert entry.tokenize is not None
        for text in TEXTS[entry.case.text or ""] + ["  ", "Ünïcödé  the", "the\u00a0cat"]:
            assert server.encode(server.normalise(text)).tolist() == entry.tokenize(text), (case_id, text)


def test_cli_zero_spec_prints_what_it_settled_and_repeats_from_its_spec(tmp_path: Path) -> None:
    obj = make_module("log-softmax")
    checkpoint = save("gru", obj, tmp_path)

    def seqserve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "seqserve", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
        )

    given = tmp_path / "mine.json"  # only what settling cannot know; the rest is settled
    given.write_text(json.dumps({"name": "gru", "labels": ["verb", "noun", "adj", "adv"], "max_length": 8}))
    first = seqserve(
        "export",
        str(checkpoint),
        "--spec",
        str(given),
        "--module",
        f"{BYO}:LogSoftmaxGRU",
        "--repository",
        str(tmp_path / "repo"),
        "--parity-batches",
        "4",
    )
    assert first.returncode == 0, first.stderr
    assert "settled: the module applies log_softmax to its answer" in first.stdout
    meta = json.loads((tmp_path / "repo" / "gru" / "1" / "model.json").read_text())
    assert meta["labels"] == ["verb", "noun", "adj", "adv"] and meta["input"]["max_length"] == 8
    spec = tmp_path / "repo" / "gru" / "1" / "spec.json"
    again = seqserve(
        "export", str(checkpoint), "--spec", str(spec), "--repository", str(tmp_path / "repo"), "--parity-batches", "4"
    )
    assert again.returncode == 0, again.stderr
    meta = json.loads((tmp_path / "repo" / "gru" / "2" / "model.json").read_text())
    assert meta["graph"]["output_activation"] == "exp"
    inspected = seqserve("inspect", str(checkpoint), "--module", f"{BYO}:LogSoftmaxGRU")
    assert inspected.returncode == 0 and "settled: 'gru': GRU" in inspected.stdout, inspected.stderr


def test_cli_says_why_when_no_family_fits_and_what_a_text_model_needs(tmp_path: Path) -> None:
    checkpoint = save("attention", make_module("attention"), tmp_path)
    inspected = subprocess.run(
        [sys.executable, "-m", "seqserve", "inspect", str(checkpoint), "--module", f"{BYO}:AttentionLSTM"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert inspected.returncode == 0, inspected.stderr
    assert "not settled: 'attn' (MultiheadAttention) runs after the recurrent layer" in inspected.stdout
    text = save("text", make_module("text-gelu-layernorm"), tmp_path)
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "export",
            str(text),
            "--module",
            f"{BYO}:TextClassifier",
            "--module-kwargs",
            '{"vocab_size": 12}',
            "--repository",
            str(tmp_path / "repo"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
    assert "--vocab FILE" in refused.stderr


def test_a_wrong_checkpoint_is_one_line_naming_the_tensor(tmp_path: Path) -> None:
    state = make_module("time-major-cell").state_dict()
    del state["rnn.weight_hh"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(UserModuleError) as refused:
        export_module(tmp_path / "broken.pt", UserModule(BYO, "TimeMajorCell", {}), tmp_path / "repo")
    message = str(refused.value)
    assert "\n" not in message and "missing rnn.weight_hh [24, 6]" in message
    assert not (tmp_path / "repo").exists()
