"""Family F9: a GRU in the original Cho et al. (2014) form, from NumPy arrays.

    z = sigmoid(W_z x + U_z h + b_z)         update gate
    r = sigmoid(W_r x + U_r h + b_r)         reset gate
    h~ = tanh(W_h x + U_h (r * h) + b_h)     reset applied to h before the product
    h = (1 - z) * h_prev + z * h~

torch's GRU applies the reset after the product (``r * (U_h h + b)``), so it
cannot run this model. ONNX's GRU op with ``linear_before_reset=0`` is this
form, with the update convention flipped (``h = (1 - z') h~ + z' h_prev``):
``z' = 1 - z = sigmoid(-(W_z x + U_z h + b_z))``, so the update gate's weights
and bias go into the ONNX graph negated. The graph is built directly with
``onnx.helper``; eager and TorchScript run a scripted time loop that holds
``h`` past each sequence's length.

Parameters are one layer's ``rnn.{W,U,b}_{z,r,h}`` and ``head.weight``,
``head.bias`` (``y = W_y h + b_y``), stored as the user's arrays are: ``[out,
in]`` for ``array_layout="w_x"`` (``W @ x``), ``[in, out]`` for ``"x_w"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.spec import ModelSpec

GATES = ("z", "r", "h")


@torch.jit.script
def cho_gru_final(
    x: Tensor, lengths: Tensor, h: Tensor, w: Tensor, u_z: Tensor, u_r: Tensor, u_h: Tensor, b: Tensor
) -> Tensor:
    """Final state of each sequence from the state ``h [B, H]`` it starts in:
    ``x [B, T, F]``, ``w [F, 3H]`` (z, r, h), ``u_* [H, H]`` used as ``h @ u``,
    ``b [3H]`` -> ``[B, H]``."""
    hidden = u_z.shape[0]
    projected = torch.matmul(x, w) + b  # [B, T, 3H]
    for t in range(x.shape[1]):
        step = projected[:, t]
        z = torch.sigmoid(step[:, :hidden] + torch.matmul(h, u_z))
        r = torch.sigmoid(step[:, hidden : 2 * hidden] + torch.matmul(h, u_r))
        candidate = torch.tanh(step[:, 2 * hidden :] + torch.matmul(r * h, u_h))
        updated = (1 - z) * h + z * candidate
        h = torch.where((lengths > t).unsqueeze(1), updated, h)
    return h


class ChoGRUModel(nn.Module):
    """``forward(x [B, T, F], lengths [B]) -> [B, O]``; exact on padded batches.

    With ``array_layout="concat"`` each gate has one matrix over ``[x, h]``
    (``rnn.W_z [H, F+H]``, no ``U``); with ``head_layers=[]`` there is no head
    and the answer is the final state ``[B, H]``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        assert spec.input_size is not None
        self.spec = spec
        self.transposed = spec.array_layout == "x_w"
        self.concat = spec.array_layout == "concat"
        self.has_head = spec.head_layers != ()
        hidden, features = spec.hidden_size, spec.input_size
        self.features = features
        self.rnn = nn.Module()
        for gate in GATES:
            if self.concat:
                self.rnn.register_parameter(f"W_{gate}", nn.Parameter(self._empty(hidden, features + hidden)))
            else:
                self.rnn.register_parameter(f"W_{gate}", nn.Parameter(self._empty(hidden, features)))
                self.rnn.register_parameter(f"U_{gate}", nn.Parameter(self._empty(hidden, hidden)))
            self.rnn.register_parameter(f"b_{gate}", nn.Parameter(torch.zeros(hidden)))
        self.head = nn.Module()
        if self.has_head:
            self.head.register_parameter("weight", nn.Parameter(self._empty(spec.num_outputs, hidden)))
            self.head.register_parameter("bias", nn.Parameter(torch.zeros(spec.num_outputs)))

    def _empty(self, rows: int, cols: int) -> Tensor:
        shape = (cols, rows) if self.transposed else (rows, cols)
        return nn.init.uniform_(torch.empty(shape), -0.3, 0.3)

    def _x_w(self, name: str) -> Tensor:
        """The named matrix (``rnn.W_z``, ``rnn.U_z``, ``head.weight``) as used in
        ``x @ W``, whatever its stored layout; ``concat`` splits ``W`` into its
        ``x`` and ``h`` columns."""
        if self.concat and name.startswith("rnn."):
            kind, gate = name[len("rnn.") :].split("_")
            whole = self.get_parameter(f"rnn.W_{gate}")
            part = whole[:, : self.features] if kind == "W" else whole[:, self.features :]
            return part.t()
        weight = self.get_parameter(name)
        return weight if self.transposed else weight.t()

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.head_output(self.final_state(x, lengths, x.new_zeros(x.shape[0], self.spec.hidden_size)))

    def final_state(self, x: Tensor, lengths: Tensor, h0: Tensor) -> Tensor:
        """Each sequence's state ``[B, H]`` after its last valid step, starting from ``h0``."""
        w = torch.cat([self._x_w(f"rnn.W_{g}") for g in GATES], dim=1)
        b = torch.cat([self.get_parameter(f"rnn.b_{g}") for g in GATES])
        u_z, u_r, u_h = (self._x_w(f"rnn.U_{g}") for g in GATES)
        h: Tensor = cho_gru_final(x, lengths, h0, w, u_z, u_r, u_h, b)
        return h

    def head_output(self, h: Tensor) -> Tensor:
        """The answer from a final state: the head, if any, then the output activation."""
        if self.has_head:
            h = h @ self._x_w("head.weight") + self.get_parameter("head.bias")
        return apply_output_activation(h, self.spec.output_activation)


def apply_output_activation(y: Tensor, name: str) -> Tensor:
    if name == "softmax":
        return torch.softmax(y, dim=-1)
    if name == "log_softmax":
        return torch.log_softmax(y, dim=-1)
    if name == "sigmoid":
        return torch.sigmoid(y)
    return y


def write_onnx(
    model: ChoGRUModel,
    path: Path,
    input_name: str,
    lengths_name: str,
    output_name: str,
    opset: int,
    state: tuple[str, str] | None = None,
) -> None:
    """``input [B, T, F]``, ``lengths [B]`` -> ``output [B, O]`` with one ONNX GRU node.

    With ``state=(state_in, state_out)`` the graph also takes the starting state
    ``[B, H]`` and returns each sequence's state after its last valid step (streams).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def row_major(name: str) -> np.ndarray:  # [out, in], as W @ x
        return model._x_w(name).detach().t().numpy().astype(np.float32)

    def vector(name: str) -> np.ndarray:
        return model.get_parameter(name).detach().numpy()

    spec = model.spec
    out_width = spec.num_outputs if model.has_head else spec.hidden_size
    tail: list[onnx.NodeProto] = []
    final = state[1] if state else "h"
    last = final if not model.has_head else "y"
    activation = {"softmax": "Softmax", "log_softmax": "LogSoftmax", "sigmoid": "Sigmoid"}.get(spec.output_activation)
    if activation is not None:
        axis: dict[str, Any] = {} if activation == "Sigmoid" else {"axis": -1}
        tail.append(helper.make_node(activation, [last], [output_name], **axis))
    else:
        tail.append(helper.make_node("Identity", [last], [output_name]))

    # ONNX GRU: W [1, 3H, F], R [1, 3H, H] in gate order z, r, h; B [1, 6H] = Wb then Rb.
    w = np.concatenate([-row_major("rnn.W_z"), row_major("rnn.W_r"), row_major("rnn.W_h")])[None]
    r = np.concatenate([-row_major("rnn.U_z"), row_major("rnn.U_r"), row_major("rnn.U_h")])[None]
    wb = np.concatenate([-vector("rnn.b_z"), vector("rnn.b_r"), vector("rnn.b_h")])
    b = np.concatenate([wb, np.zeros_like(wb)]).astype(np.float32)[None]
    nodes = [
        helper.make_node("Transpose", [input_name], ["x_tbf"], perm=[1, 0, 2]),
        helper.make_node("Cast", [lengths_name], ["lengths_i32"], to=TensorProto.INT32),
        # NOTE: with sequence_lens, Y_h holds each sequence's state at its own last valid step.
        helper.make_node(
            "GRU",
            ["x_tbf", "W", "R", "B", "lengths_i32", "h0" if state else ""],
            ["", "y_h"],
            hidden_size=spec.hidden_size,
            linear_before_reset=0,
        ),
        helper.make_node("Squeeze", ["y_h", "axis0"], [final]),
    ]
    if state:
        nodes.insert(0, helper.make_node("Unsqueeze", [state[0], "axis0"], ["h0"]))
    if model.has_head:
        nodes.append(helper.make_node("Gemm", [final, "head_w", "head_b"], ["y"], transB=1))
    nodes += tail
    initializers = [
        numpy_helper.from_array(w.astype(np.float32), "W"),
        numpy_helper.from_array(r.astype(np.float32), "R"),
        numpy_helper.from_array(b, "B"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
    ]
    if model.has_head:
        initializers.append(numpy_helper.from_array(row_major("head.weight"), "head_w"))  # [O, H]
        initializers.append(numpy_helper.from_array(vector("head.bias").astype(np.float32), "head_b"))
    assert spec.input_size is not None
    inputs = [
        helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", "time", spec.input_size]),
        helper.make_tensor_value_info(lengths_name, TensorProto.INT64, ["batch"]),
    ]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", out_width])]
    if state:
        inputs.append(helper.make_tensor_value_info(state[0], TensorProto.FLOAT, ["batch", spec.hidden_size]))
        outputs.append(helper.make_tensor_value_info(state[1], TensorProto.FLOAT, ["batch", spec.hidden_size]))
    graph = helper.make_graph(nodes, spec.name, inputs, outputs, initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="seqserve")
    onnx_model.ir_version = 9  # readable by every onnxruntime seqserve supports
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.save(onnx_model, str(path))
