"""Exactness of the length-aware stack: every cell x direction x readout,
through eager, ONNX Runtime and TorchScript, against the plain module run on
each sequence alone; and proof that the naive tutorial readout is not exact."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.export import export_model
from models.parity import TOLERANCE, random_batches
from models.spec import ModelSpec, Normalization, Tokenizer
from models.stack import SequenceModel, reversal_index

COMBOS = list(itertools.product(["lstm", "gru"], [False, True], ["last", "final", "mean", "max", "all"]))


def make_spec(cell: str, bidirectional: bool, readout: str, **overrides: object) -> ModelSpec:
    tagging = readout == "all"
    fields: dict[str, object] = dict(
        name=f"{cell}-{'bi' if bidirectional else 'uni'}-{readout}",
        task="tagging" if tagging else "classification",
        cell=cell,
        bidirectional=bidirectional,
        readout=readout,
        num_layers=2,
        hidden_size=12,
        input_size=5,
        num_outputs=3,
        labels=("a", "b", "c"),
        max_length=40,
    )
    fields.update(overrides)
    return ModelSpec(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("cell", "bidirectional", "readout"), COMBOS)
def test_every_combination_exports_exactly(tmp_path: Path, cell: str, bidirectional: bool, readout: str) -> None:
    torch.manual_seed(0)
    spec = make_spec(cell, bidirectional, readout)
    entry = export_model(SequenceModel(spec), tmp_path, batches=25)
    import json

    parity = json.loads((entry / "parity.json").read_text())
    assert set(parity["max_abs_diff"]) == {"eager", "onnx", "torchscript"}
    assert all(d <= TOLERANCE for d in parity["max_abs_diff"].values())
    assert parity["min_length"] == 1 and parity["max_length"] == spec.max_length
    assert len(parity["batch_sizes"]) > 3


def test_text_model_with_embedding_exports_exactly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    spec = make_spec(
        "lstm",
        True,
        "mean",
        input_kind="text",
        input_size=None,
        embedding_dim=6,
        tokenizer=Tokenizer.build(["anna", "bert", "carla", "dörte"]),
        head_hidden=8,
    )
    entry = export_model(SequenceModel(spec), tmp_path, batches=25)
    assert (entry / "model.onnx").is_file() and (entry / "model.pt").is_file()


def test_regression_with_scaling_in_graph_exports_exactly(tmp_path: Path) -> None:
    torch.manual_seed(2)
    spec = make_spec(
        "gru",
        False,
        "last",
        task="regression",
        labels=None,
        num_outputs=2,
        output_names=("p", "q"),
        input_normalization=Normalization((1.0,) * 5, (3.0,) * 5),
        output_normalization=Normalization((50.0, -4.0), (20.0, 0.5)),
    )
    export_model(SequenceModel(spec), tmp_path, batches=25)


def test_parity_batches_mix_lengths_and_sizes() -> None:
    spec = make_spec("lstm", True, "last")
    batches = random_batches(spec, 30, seed=0)
    first_lengths = batches[0][1]
    assert 1 in first_lengths and spec.max_length in first_lengths
    sizes = {len(lengths) for _, lengths in batches}
    assert 3 not in sizes or len(sizes) > 3  # not only the traced batch size
    for x, lengths in batches:
        for row, n in zip(x, lengths, strict=True):
            assert not row[n:].any()  # zero padding past each length


def test_reversal_index_reverses_within_length_and_is_an_involution() -> None:
    lengths = torch.tensor([4, 1, 2])
    index = reversal_index(lengths, 4)
    assert index.tolist() == [[3, 2, 1, 0], [0, 1, 2, 3], [1, 0, 2, 3]]
    assert torch.equal(torch.gather(index, 1, index), torch.arange(4).expand(3, 4))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_naive_tutorial_readout_on_padded_batch_is_not_exact(cls: type[nn.RNNBase]) -> None:
    """``fc(out[:, -1, :])`` on a zero-padded batch reads padding for short
    sequences: the trap seqserve's stack exists to avoid."""
    torch.manual_seed(0)
    rnn = cls(5, 12, num_layers=2, batch_first=True, bidirectional=True).eval()
    lengths = [20, 3, 11]
    seqs = [torch.randn(n, 5) for n in lengths]
    padded = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    with torch.no_grad():
        naive = rnn(padded)[0][:, -1, :]
        alone = torch.stack([rnn(s.unsqueeze(0))[0][0, -1, :] for s in seqs])
        diff = (naive - alone).abs().amax(dim=1)
    assert diff[0] <= TOLERANCE  # the longest sequence is unaffected
    assert diff[1] > 100 * TOLERANCE and diff[2] > 100 * TOLERANCE

    spec = make_spec(cls.__name__.lower(), True, "last", hidden_size=12)
    model = SequenceModel(spec).eval()
    model.rnn.load_state_dict(rnn.state_dict())
    with torch.no_grad():
        exact = model.pool(model.rnn(padded, torch.tensor(lengths)), torch.tensor(lengths))
    assert float((exact - alone).abs().max()) <= TOLERANCE


def test_standard_state_dict_loads_without_renaming() -> None:
    rnn = nn.LSTM(5, 12, num_layers=2, bidirectional=True)
    model = SequenceModel(make_spec("lstm", True, "last"))
    model.rnn.load_state_dict(rnn.state_dict())  # strict: same names, same shapes
    assert np.allclose(model.rnn.weight_hh_l1_reverse.detach(), rnn.weight_hh_l1_reverse.detach())
