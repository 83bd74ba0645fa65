"""What a model looks like under the Open Inference Protocol, for HTTP and gRPC alike: the tensors
this server takes and answers (whatever the graph's own names are) and the platform name."""

from __future__ import annotations

from typing import Any

from service.model_json import ModelJson
from service.validation import V2_FEATURES, V2_LENGTHS, V2_TEXT

PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
"""Triton's platform names of the runtimes."""


def model_tensors(spec: ModelJson) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model's input and output tensors: `{"name", "datatype", "shape"}` each, -1 for a dynamic axis."""
    if spec.input.kind == "text":
        inputs = [{"name": V2_TEXT, "datatype": "BYTES", "shape": [-1]}]
    elif spec.input.kind == "tokens":
        inputs = [
            {"name": V2_FEATURES, "datatype": spec.graph.input_dtype.upper(), "shape": [-1, -1]},
            {"name": V2_LENGTHS, "datatype": "INT64", "shape": [-1]},
        ]
    else:
        inputs = [
            {"name": V2_FEATURES, "datatype": "FP32", "shape": [-1, -1, spec.input.features or -1]},
            {"name": V2_LENGTHS, "datatype": "INT64", "shape": [-1]},
        ]
    if spec.task == "regression":
        count = len(spec.output_names) if spec.output_names else -1
        return inputs, [{"name": "values", "datatype": "FP32", "shape": [-1, count]}]
    classes = len(spec.labels or ())
    steps = [-1, -1] if spec.task == "tagging" else [-1]
    outputs = [
        {"name": "probabilities", "datatype": "FP32", "shape": [*steps, classes]},
        {"name": "label", "datatype": "BYTES", "shape": steps},
    ]
    if spec.graph.output_activation == "softmax":
        outputs.append({"name": "logits", "datatype": "FP32", "shape": [*steps, classes]})
    return inputs, outputs
