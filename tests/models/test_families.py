"""Bring your own checkpoint, families F1-F9: a tutorial-style module (from
``tutorial.py``) is randomised, saved as a state_dict (F9: NumPy arrays),
exported through a spec, and the written graphs are checked in mixed-length
padded batches against the module run on each sequence alone. Wrong specs are
refused with a message that names the tensor."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.checkpoint import CheckpointError, build_model, load_state_dict
from models.checkpoint_export import export_checkpoint
from models.inspect import guess_family
from models.parity import TOLERANCE, ParityError
from models.spec import ModelSpec, Tokenizer, UserModule
from models.usermodule import UserModuleError
from tests.models import tutorial

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = Path(tutorial.__file__).resolve()
MAX_LENGTH = 10
VOCABULARY = Tokenizer(vocabulary=("<pad>", "<unk>", *"abcdefghij"))


@dataclass(frozen=True)
class Case:
    family: str
    cls: str
    kwargs: dict[str, Any]
    spec: dict[str, Any]
    wrong_family: dict[str, Any]
    """Spec overrides naming another family; must fail on a named tensor."""
    drop: str
    """A checkpoint tensor to delete (the reverse direction's where there is one)."""
    missing: str
    """How the refusal names it."""
    inputs: str = "batch"
    trap: bool = False
    """The module is wrong on a padded batch (``out[:, -1]``, ``torch.flip``, pooling)."""
    wrapped: bool = False
    """Saved the way training scripts do: ``{"model_state_dict": ..., "epoch": n}``."""
    extra: dict[str, Any] = field(default_factory=dict)


def lstm_names(rnn: str, head: str) -> dict[str, Any]:
    return {"prefixes": {f"{rnn}.": "rnn.", f"{head}.": "head."}}


CLASSES = {"num_outputs": 3, "labels": ["a", "b", "c"]}
CASES = {
    "F1": Case(
        "F1",
        "BiLSTMClassifier",
        {"input_size": 3, "hidden_size": 8, "num_layers": 2, "num_classes": 3},
        {
            "task": "classification",
            "cell": "lstm",
            "bidirectional": True,
            "num_layers": 2,
            "hidden_size": 8,
            "input_size": 3,
            "readout": "last",
            **CLASSES,
            "names": lstm_names("lstm", "fc"),
        },
        {"family": "F3", "cell": "gru"},
        "lstm.weight_hh_l1_reverse",
        "missing rnn.weight_hh_l1_reverse [32, 8] (lstm.weight_hh_l1_reverse in the checkpoint)",
        trap=True,
        wrapped=True,
    ),
    "F2": Case(
        "F2",
        "LSTMForecaster",
        {"input_size": 2, "hidden_size": 8, "num_layers": 2, "output_size": 1},
        {
            "task": "regression",
            "cell": "lstm",
            "num_layers": 2,
            "hidden_size": 8,
            "input_size": 2,
            "readout": "last",
            "num_outputs": 1,
            "output_names": ["next"],
            "names": lstm_names("lstm", "linear"),
        },
        {"family": "F3", "cell": "gru"},
        "lstm.bias_hh_l1",
        "missing rnn.bias_hh_l1 [32] (lstm.bias_hh_l1 in the checkpoint)",
        trap=True,
    ),
    "F3": Case(
        "F3",
        "GRUClassifier",
        {"input_size": 3, "hidden_size": 8, "num_layers": 2, "num_classes": 3},
        {
            "task": "classification",
            "cell": "gru",
            "bidirectional": True,
            "num_layers": 2,
            "hidden_size": 8,
            "input_size": 3,
            "readout": "final",
            **CLASSES,
            "names": lstm_names("gru", "classifier"),
        },
        {"family": "F1", "cell": "lstm"},
        "gru.weight_ih_l0_reverse",
        "missing rnn.weight_ih_l0_reverse [24, 3] (gru.weight_ih_l0_reverse in the checkpoint)",
    ),
    "F4": Case(
        "F4",
        "TextClassifier",
        {"vocab_size": 12, "embed_dim": 6, "mlp_dim": 8, "hidden_size": 8, "num_layers": 2, "num_classes": 2},
        {
            "task": "classification",
            "cell": "lstm",
            "bidirectional": True,
            "num_layers": 2,
            "hidden_size": 8,
            "input_kind": "text",
            "embedding_dim": 6,
            "tokenizer": {"vocabulary": list(VOCABULARY.vocabulary)},
            "input_mlp": [8],
            "layer_norm": True,
            "concat_input_mean": True,
            "readout": "mean",
            "head_hidden": 8,
            "dropout": 0.3,
            "num_outputs": 2,
            "labels": ["neg", "pos"],
            "names": {
                "prefixes": {"mlp.": "input_mlp.", "lstm.": "rnn."},
                "renames": {"head.3.weight": "head.2.weight", "head.3.bias": "head.2.bias"},
            },
        },
        {"family": "F3", "cell": "gru"},
        "lstm.weight_ih_l1_reverse",
        "missing rnn.weight_ih_l1_reverse [32, 16] (lstm.weight_ih_l1_reverse in the checkpoint)",
        inputs="batch_and_lengths",
        wrapped=True,
    ),
    "F4-pool": Case(
        "F4",
        "PooledTextClassifier",
        {"vocab_size": 12, "embed_dim": 6, "mlp_dim": 8, "hidden_size": 8, "num_layers": 2, "num_classes": 2},
        {},
        {"family": "F3", "cell": "gru"},
        "norm.weight",
        "missing norm.weight [16]",
        trap=True,
    ),
    "F5": Case(
        "F5",
        "BiLSTMTagger",
        {"input_size": 3, "hidden_size": 8, "num_tags": 4},
        {
            "task": "tagging",
            "cell": "lstm",
            "bidirectional": True,
            "hidden_size": 8,
            "input_size": 3,
            "readout": "all",
            "num_outputs": 4,
            "labels": ["O", "B", "I", "E"],
            "names": lstm_names("lstm", "hidden2tag"),
        },
        {"family": "F3", "cell": "gru"},
        "lstm.bias_ih_l0_reverse",
        "missing rnn.bias_ih_l0_reverse [32] (lstm.bias_ih_l0_reverse in the checkpoint)",
    ),
    "F6": Case(
        "F6",
        "ProjectedLSTM",
        {"input_size": 3, "hidden_size": 8, "proj_size": 4, "num_layers": 2, "num_classes": 3},
        {
            "task": "classification",
            "cell": "lstm",
            "bidirectional": True,
            "num_layers": 2,
            "hidden_size": 8,
            "proj_size": 4,
            "input_size": 3,
            "readout": "last",
            **CLASSES,
            "names": lstm_names("lstm", "fc"),
        },
        {"family": "F1", "proj_size": 0},
        "lstm.weight_hr_l1_reverse",
        "missing rnn.weight_hr_l1_reverse [4, 8] (lstm.weight_hr_l1_reverse in the checkpoint)",
        trap=True,
    ),
    "F7": Case(
        "F7",
        "LSTMCellLoop",
        {"input_size": 3, "hidden_size": 8, "num_classes": 3},
        {
            "task": "classification",
            "cell": "lstm",
            "hidden_size": 8,
            "input_size": 3,
            "readout": "last",
            **CLASSES,
            "names": lstm_names("cell", "fc"),
        },
        {"family": "F2"},
        "cell.weight_hh",
        "missing rnn.weight_hh_l0 [32, 8] (cell.weight_hh in the checkpoint)",
        trap=True,
    ),
    "F8": Case(
        "F8",
        "FlipBiLSTM",
        {"input_size": 3, "hidden_size": 8, "num_layers": 2, "num_classes": 3},
        {
            "task": "classification",
            "cell": "lstm",
            "bidirectional": True,
            "num_layers": 2,
            "hidden_size": 8,
            "input_size": 3,
            "readout": "last",
            **CLASSES,
            "names": {**lstm_names("lstm_fwd", "fc"), "backward": "lstm_bwd."},
        },
        {"family": "F1"},
        "lstm_bwd.weight_ih_l0",
        "missing rnn.weight_ih_l0_reverse [32, 3] (lstm_bwd.weight_ih_l0 in the checkpoint)",
        trap=True,
    ),
    "F8-tagger": Case(
        "F8",
        "FlipBiLSTM",
        {"input_size": 3, "hidden_size": 8, "num_layers": 1, "num_classes": 3, "per_step": True},
        {
            "task": "tagging",
            "cell": "lstm",
            "bidirectional": True,
            "hidden_size": 8,
            "input_size": 3,
            "readout": "all",
            **CLASSES,
            "names": {**lstm_names("lstm_fwd", "fc"), "backward": "lstm_bwd."},
        },
        {"family": "F3", "cell": "gru"},
        "lstm_bwd.bias_hh_l0",
        "missing rnn.bias_hh_l0_reverse [32] (lstm_bwd.bias_hh_l0 in the checkpoint)",
        trap=True,
    ),
    "F9": Case(
        "F9",
        "ChoGRU",
        {"input_size": 3, "hidden_size": 8, "num_classes": 3},
        {
            "task": "classification",
            "cell": "gru",
            "hidden_size": 8,
            "input_size": 3,
            "readout": "last",
            **CLASSES,
            "names": {"prefixes": {"": "rnn."}, "renames": {"W_y": "head.weight", "b_y": "head.bias"}},
        },
        {"family": "F3"},
        "U_r",
        "missing rnn.U_r [8, 8] (U_r in the checkpoint)",
        inputs="sequence",
    ),
}
CASES["F4-pool"] = replace(CASES["F4-pool"], spec=CASES["F4"].spec, wrapped=True)


def spec_dict(case: Case, name: str, **overrides: Any) -> dict[str, Any]:
    spec = {
        "name": name,
        "family": case.family,
        **case.spec,
        "max_length": MAX_LENGTH,
        "reference": {"source": str(TUTORIAL), "class": case.cls, "kwargs": case.kwargs, "inputs": case.inputs},
    }
    spec.update(overrides)
    return spec


def make_user_model(case: Case, seed: int = 0) -> Any:
    """The user's module with weights that are nobody's defaults."""
    torch.manual_seed(seed)
    if case.family == "F9":
        model = tutorial.ChoGRU(**case.kwargs, seed=seed)
        rng = np.random.default_rng(seed + 1)
        for name, array in model.params().items():  # non-zero biases too
            setattr(model, name, array + rng.normal(0, 0.2, array.shape))
        return model
    model = getattr(tutorial, case.cls)(**case.kwargs)
    for p in model.parameters():
        nn.init.uniform_(p, -0.5, 0.5)
    return model.eval()


def save_checkpoint(case: Case, model: Any, folder: Path) -> Path:
    if case.family == "F9":
        path = folder / "cho.npz"
        np.savez(path, **model.params())
        return path
    path = folder / "model.pt"
    state = model.state_dict()
    torch.save({"model_state_dict": state, "epoch": 7} if case.wrapped else state, path)
    return path


def write_spec(spec: dict[str, Any], folder: Path, yaml_file: bool = False) -> Path:
    if yaml_file:
        import yaml

        path = folder / "spec.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    else:
        path = folder / "spec.json"
        path.write_text(json.dumps(spec, indent=2))
    return path


def padded_batch(case: Case, lengths: list[int], seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    steps = max(lengths)
    if case.spec.get("input_kind") == "text":
        x = rng.integers(1, len(VOCABULARY.vocabulary), size=(len(lengths), steps)).astype(np.int64)
    else:
        x = rng.standard_normal((len(lengths), steps, case.spec["input_size"])).astype(np.float32)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    return x, np.array(lengths, dtype=np.int64)


def alone(case: Case, model: Any, seq: np.ndarray) -> np.ndarray:
    """The user's module on one unpadded sequence, called as its tutorial does."""
    if case.family == "F9":
        return np.asarray(model.forward(seq.astype(np.float64)))
    with torch.no_grad():
        x = torch.from_numpy(seq)[None]
        out = model(x, torch.tensor([len(seq)])) if case.inputs == "batch_and_lengths" else model(x)
    return (
        out[0].numpy().reshape(-1, case.spec["num_outputs"]).squeeze(0)
        if case.spec["task"] != "tagging"
        else out[0].numpy()
    )


def user_on_padded_batch(case: Case, model: Any, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        t = torch.from_numpy(x)
        return (model(t, torch.from_numpy(lengths)) if case.inputs == "batch_and_lengths" else model(t)).numpy()


@pytest.mark.parametrize("case_id", list(CASES))
def test_family_exports_exactly_against_the_users_module(case_id: str, tmp_path: Path) -> None:
    case = CASES[case_id]
    model = make_user_model(case)
    checkpoint = save_checkpoint(case, model, tmp_path)
    spec_path = write_spec(spec_dict(case, case_id.lower()), tmp_path, yaml_file=case_id == "F1")
    entry = export_checkpoint(checkpoint, spec_path, tmp_path / "repo", batches=12)

    meta = json.loads((entry / "model.json").read_text())
    assert meta["family"] == case.family and meta["padding"] == "exact"
    assert meta["formats"] == {"onnx": "model.onnx", "torchscript": "model.pt"}
    assert meta["parity"]["reference"] == f"user module tutorial.py:{case.cls}"
    assert set(meta["parity"]["max_abs_diff"]) == {"eager", "onnx", "torchscript"}
    assert meta["graph"]["input"] == "input" and meta["graph"]["lengths"] == "lengths"

    # Served exactness, checked here independently of export's own parity code.
    lengths = [MAX_LENGTH, 1, 4, 7, 2, MAX_LENGTH - 1]
    x, n = padded_batch(case, lengths)
    session = ort.InferenceSession(str(entry / "model.onnx"), providers=["CPUExecutionProvider"])
    served = {"onnx": session.run(None, {"input": x, "lengths": n})[0]}
    with torch.no_grad():
        served["torchscript"] = torch.jit.load(str(entry / "model.pt"))(
            torch.from_numpy(x), torch.from_numpy(n)
        ).numpy()
    for graph, out in served.items():
        for i, length in enumerate(lengths):
            want = alone(case, model, x[i, :length])
            got = out[i, :length] if case.spec["task"] == "tagging" else out[i]
            assert np.abs(got - want).max() <= TOLERANCE, (graph, length)

    if case.trap:  # the user's own module, given the same padded batch, is wrong for the short ones
        naive = user_on_padded_batch(case, model, x, n)
        short = lengths.index(1)
        got = naive[short, :1] if case.spec["task"] == "tagging" else naive[short]
        assert np.abs(got - alone(case, model, x[short, :1])).max() > 1e-3


MUTATIONS = ["hidden_size", "missing_tensor", "wrong_family"]


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("case_id", list(CASES))
def test_wrong_spec_is_refused_naming_the_tensor(case_id: str, mutation: str, tmp_path: Path) -> None:
    case = CASES[case_id]
    checkpoint = save_checkpoint(case, make_user_model(case), tmp_path)
    state = load_state_dict(checkpoint)
    spec = spec_dict(case, "wrong")
    if mutation == "hidden_size":
        spec["hidden_size"] += 2
        expect = [" (as rnn.", "has shape", "the spec needs"]
    elif mutation == "missing_tensor":
        del state[case.drop]
        expect = [case.missing]
    else:
        spec.update(case.wrong_family)
        # A tagger's weights look like a classifier's (F1); the hint says what the names look like.
        expect = [f"look like family {'F1' if case.family == 'F5' else case.family}"]
    with pytest.raises(CheckpointError) as refused:
        build_model(ModelSpec.from_dict(spec), state, source="model.pt")
    message = str(refused.value)
    assert "\n" not in message
    for part in expect:
        assert part in message
    assert any(name in message for name in [*state, case.drop])  # in the checkpoint's own names


def test_f1_readout_means_the_backward_output_at_the_last_step(tmp_path: Path) -> None:
    """A spec reading the final states (``h_n``) instead of ``out[:, -1]`` is
    refused by parity against the user's module, and nothing is written."""
    case = CASES["F1"]
    checkpoint = save_checkpoint(case, make_user_model(case), tmp_path)
    spec_path = write_spec(spec_dict(case, "f1", readout="final"), tmp_path)
    with pytest.raises(ParityError, match="max abs diff"):
        export_checkpoint(checkpoint, spec_path, tmp_path / "repo", batches=3)
    assert not any((tmp_path / "repo").iterdir())


def test_without_a_module_parity_is_against_seqserves_reference(tmp_path: Path) -> None:
    case = CASES["F8"]
    checkpoint = save_checkpoint(case, make_user_model(case), tmp_path)
    spec = spec_dict(case, "f8")
    del spec["reference"]
    entry = export_checkpoint(checkpoint, write_spec(spec, tmp_path), tmp_path / "repo", batches=6)
    meta = json.loads((entry / "model.json").read_text())
    assert meta["parity"]["reference"] == "seqserve reference"
    assert meta["architecture"]["direction_stacks"] == "separate"


def test_cho_gru_arrays_used_as_x_at_w_export_against_seqserves_numpy_reference(tmp_path: Path) -> None:
    case = CASES["F9"]
    params = make_user_model(case).params()
    transposed = {k: v.T if v.ndim == 2 else v for k, v in params.items()}
    np.savez(tmp_path / "cho.npz", **transposed)
    spec = spec_dict(case, "cho", array_layout="x_w")
    del spec["reference"]
    entry = export_checkpoint(tmp_path / "cho.npz", write_spec(spec, tmp_path), tmp_path / "repo", batches=6)
    meta = json.loads((entry / "model.json").read_text())
    assert meta["parity"]["reference"] == "seqserve reference" and meta["architecture"]["gru_form"] == "cho"
    # The same arrays in the paper's layout and the user's NumPy module agree with this graph.
    user = tutorial.ChoGRU(3, 8, 3)
    for k, v in params.items():
        setattr(user, k, v)
    x, n = padded_batch(case, [5, 1, 9])
    out = ort.InferenceSession(str(entry / "model.onnx")).run(None, {"input": x, "lengths": n})[0]
    for i, length in enumerate(n):
        assert np.abs(out[i] - user.forward(x[i, :length].astype(np.float64))).max() <= TOLERANCE


def test_users_module_that_does_not_take_the_checkpoint_is_named(tmp_path: Path) -> None:
    case = CASES["F1"]
    checkpoint = save_checkpoint(case, make_user_model(case), tmp_path)
    module = UserModule(str(TUTORIAL), "BiLSTMClassifier", {**case.kwargs, "num_layers": 1})
    with pytest.raises(
        UserModuleError,
        match=r"BiLSTMClassifier does not take the checkpoint: unexpected "
        r"lstm\.weight_ih_l1 \[32, 16\]",
    ):
        export_checkpoint(
            checkpoint, write_spec(spec_dict(case, "f1"), tmp_path), tmp_path / "repo", module=module, batches=2
        )


@pytest.mark.parametrize("case_id", list(CASES))
def test_inspect_suggests_the_family_and_a_spec_that_fits(case_id: str, tmp_path: Path) -> None:
    case = CASES[case_id]
    state = load_state_dict(save_checkpoint(case, make_user_model(case), tmp_path))
    guess = guess_family(state, case_id)
    assert guess is not None
    # A tagger's weights look like a classifier's: inspect says F1 and mentions F5.
    assert guess.family == ("F1" if case.family == "F5" else case.family)
    if case.family == "F5":
        assert "F5" in guess.reason
    spec = dict(guess.spec)
    if spec.get("input_kind") == "text":
        spec["tokenizer"] = {"vocabulary": list(VOCABULARY.vocabulary)}
    spec.update(
        {k: case.spec[k] for k in ("readout", "task", "labels", "num_outputs", "output_names") if k in case.spec}
    )
    if case.family == "F5":
        spec["family"] = "F5"
    build_model(ModelSpec.from_dict(spec), state)  # the suggested name map fits every tensor


def seqserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seqserve", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_cli_inspect_then_export_with_the_users_module(tmp_path: Path) -> None:
    """The user's first two commands: inspect suggests F7 and writes a spec; export
    with that spec and ``--module`` writes an entry checked against their loop."""
    case = CASES["F7"]
    checkpoint = save_checkpoint(case, make_user_model(case), tmp_path)
    inspected = seqserve("inspect", str(checkpoint), "--write-spec", str(tmp_path / "suggested.json"))
    assert inspected.returncode == 0, inspected.stderr
    assert "family: F7" in inspected.stdout and "cell.weight_ih" in inspected.stdout
    result = seqserve(
        "export",
        str(checkpoint),
        "--spec",
        str(tmp_path / "suggested.json"),
        "--module",
        f"{TUTORIAL}:LSTMCellLoop",
        "--module-kwargs",
        json.dumps(case.kwargs),
        "--repository",
        str(tmp_path / "repo"),
        "--parity-batches",
        "5",
    )
    assert result.returncode == 0, result.stderr
    assert "parity against user module tutorial.py:LSTMCellLoop" in result.stdout
    meta = json.loads((tmp_path / "repo" / "model" / "1" / "model.json").read_text())
    assert meta["family"] == "F7" and meta["provenance"]["reference"] == "user module tutorial.py:LSTMCellLoop"


def test_cli_wrong_spec_is_one_line_naming_the_tensor(tmp_path: Path) -> None:
    case = CASES["F8"]
    checkpoint = save_checkpoint(case, make_user_model(case), tmp_path)
    spec_path = write_spec(spec_dict(case, "f8", family="F1"), tmp_path)
    result = seqserve("export", str(checkpoint), "--spec", str(spec_path), "--repository", str(tmp_path / "repo"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "lstm_bwd.weight_ih_l1 (as rnn.weight_ih_l1_reverse) has shape [32, 8], the spec needs [32, 16]" in lines[0]
    assert "look like family F8" in lines[0]
    assert not (tmp_path / "repo").exists()


def test_extra_tensors_are_named_unless_ignored(tmp_path: Path) -> None:
    case = CASES["F1"]
    state = load_state_dict(save_checkpoint(case, make_user_model(case), tmp_path))
    state["aux_head.weight"] = torch.zeros(2, 16)  # a training-only head
    with pytest.raises(CheckpointError, match=r"unexpected aux_head\.weight \[2, 16\]"):
        build_model(ModelSpec.from_dict(spec_dict(case, "f1")), state)
    spec = spec_dict(case, "f1")
    spec["names"] = {**spec["names"], "ignore": ["aux_head.weight"]}
    build_model(ModelSpec.from_dict(spec), state)
