"""The plain, tutorial-style modules a seqserve model must agree with when the
user gives no module of their own.

They are built from stock ``nn.LSTM``/``nn.GRU`` (or, for the Cho GRU, NumPy
written the way the paper reads) and are only ever run on one unpadded
sequence at a time, so nothing in them can be fooled by padding. Parity
checks compare every exported graph, run on padded mixed-length batches,
against them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from models.cho import ChoGRUModel
from models.spec import ModelSpec
from models.stack import SequenceModel

SEQSERVE_REFERENCE = "seqserve reference"


class ReferenceModel(nn.Module):
    """``forward(x [1, T, ...]) -> [1, O]`` or ``[1, T, O]``; batch of one, no padding."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        spec: ModelSpec = model.spec
        self.spec = spec
        self.model = model  # embedding, input MLP, norm and head are shared, not re-derived
        if spec.separate_directions:
            # Two unidirectional stacks, the second over the flipped sequence (F8).
            self.rnn = self._rnn(spec, bidirectional=False, state=model.rnn.state_dict(), suffix="")
            self.backward: nn.RNNBase | None = self._rnn(spec, False, model.rnn.state_dict(), "_reverse")
        else:
            self.rnn = self._rnn(spec, spec.bidirectional, model.rnn.state_dict(), None)
            self.backward = None
        self.eval()

    @staticmethod
    def _rnn(spec: ModelSpec, bidirectional: bool, state: dict[str, Tensor], suffix: str | None) -> nn.RNNBase:
        rnn_cls = nn.LSTM if spec.cell == "lstm" else nn.GRU
        kwargs = {"proj_size": spec.proj_size} if spec.proj_size else {}
        rnn = rnn_cls(
            spec.rnn_input_width,
            spec.hidden_size,
            spec.num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            **kwargs,
        )
        if suffix is not None:
            state = {k.removesuffix("_reverse"): v for k, v in state.items() if k.endswith("_reverse") == bool(suffix)}
        rnn.load_state_dict(state)
        return rnn

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        spec, model = self.spec, self.model
        encoded = model.encode(x)
        out, state = self.rnn(encoded)
        h_n = state[0] if isinstance(state, tuple) else state
        if self.backward is not None:
            back, back_state = self.backward(torch.flip(encoded, [1]))
            out = torch.cat([out, torch.flip(back, [1])], dim=2)
            back_h = back_state[0] if isinstance(back_state, tuple) else back_state
            h_n = torch.stack([h_n[-1], back_h[-1]])
        if model.norm is not None:
            out = model.norm(out)
        if spec.readout == "all":
            pooled = out
        elif spec.readout == "last":
            pooled = out[:, -1, :]
        elif spec.readout == "final":
            if model.norm is not None:  # the norm is on the outputs, so read the final states from them
                half = out.shape[2] // spec.directions
                pooled = (
                    torch.cat([out[:, -1, :half], out[:, 0, half:]], dim=1) if spec.bidirectional else out[:, -1, :]
                )
            else:
                pooled = torch.cat([h_n[-2], h_n[-1]], dim=1) if spec.bidirectional else h_n[-1]
        elif spec.readout == "mean":
            pooled = out.mean(dim=1)
        else:
            pooled = out.max(dim=1).values
        if spec.concat_input_mean:
            pooled = torch.cat([pooled, encoded.mean(dim=1)], dim=1)
        y: Tensor = model.head(pooled)
        if model.output_mean is not None and model.output_std is not None:
            y = y * model.output_std + model.output_mean
        return y


def cho_gru_reference(model: ChoGRUModel) -> NumpyChoGRU:
    """The paper's form of the model's arrays ([out, in], split ``W``/``U``), whatever their stored layout."""
    names = [f"rnn.{kind}_{gate}" for kind in "WU" for gate in "zrh"] + (["head.weight"] if model.has_head else [])
    p = {name: model._x_w(name).detach().t().numpy().astype(np.float64) for name in names}
    for name in ["rnn.b_z", "rnn.b_r", "rnn.b_h"] + (["head.bias"] if model.has_head else []):
        p[name] = model.get_parameter(name).detach().numpy().astype(np.float64)
    return NumpyChoGRU(p, model.spec.output_activation)


class NumpyChoGRU:
    """Cho et al.'s GRU as the paper writes it, one step at a time in float64."""

    def __init__(self, params: dict[str, np.ndarray], output_activation: str = "none") -> None:
        self.p = params
        self.output_activation = output_activation

    def __call__(self, xs: np.ndarray) -> np.ndarray:
        p = self.p
        h = np.zeros(p["rnn.U_z"].shape[0])
        for x in xs.astype(np.float64):
            z = _sigmoid(p["rnn.W_z"] @ x + p["rnn.U_z"] @ h + p["rnn.b_z"])
            r = _sigmoid(p["rnn.W_r"] @ x + p["rnn.U_r"] @ h + p["rnn.b_r"])
            h_hat = np.tanh(p["rnn.W_h"] @ x + p["rnn.U_h"] @ (r * h) + p["rnn.b_h"])
            h = (1 - z) * h + z * h_hat
        y: np.ndarray = p["head.weight"] @ h + p["head.bias"] if "head.weight" in p else h
        if self.output_activation == "sigmoid":
            return _sigmoid(y)
        if self.output_activation in ("softmax", "log_softmax"):
            e = np.exp(y - y.max())
            soft: np.ndarray = e / e.sum()
            return soft if self.output_activation == "softmax" else np.log(soft)
        return y


def _sigmoid(a: np.ndarray) -> np.ndarray:
    s: np.ndarray = 1.0 / (1.0 + np.exp(-a))
    return s
