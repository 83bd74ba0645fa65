"""Between gRPC messages and what the rest of the server speaks.

A `ModelInferRequest` becomes the V2 JSON document that `InputValidator.v2_document` reads, so one
validator holds every rule: `raw_input_contents` become the tensor bytes of the binary data extension
(the same little-endian layout), typed `contents` become each tensor's `data`. Answers go back typed, or
raw when the request came raw, as Triton answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.model_json import ModelJson
from service.outputs import v2_binary
from service.v2_metadata import model_tensors

# The field of InferTensorContents that carries each datatype.
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def infer_document(request: pb.ModelInferRequest) -> tuple[dict[str, Any], bytes]:
    """The V2 JSON document of `request`, and the tensor bytes its inputs' `binary_data_size` point into."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents: {len(raw)} entries, expected one per input ({len(request.inputs)})")
    inputs: list[dict[str, Any]] = []
    for i, tensor in enumerate(request.inputs):
        fields: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"inputs[{i}].contents: not allowed with raw_input_contents")
            fields["parameters"] = {"binary_data_size": len(raw[i])}
        else:
            fields["data"] = _typed_data(tensor, f"inputs[{i}]")
        inputs.append(fields)
    document: dict[str, Any] = {"inputs": inputs}
    if request.id:
        document["id"] = request.id
    if request.outputs:
        # NOTE: output parameters (binary_data, classification) are HTTP's; gRPC answers raw or typed.
        document["outputs"] = [{"name": output.name} for output in request.outputs]
    return document, b"".join(raw)


def _typed_data(tensor: pb.ModelInferRequest.InferInputTensor, where: str) -> list[Any]:
    field = _CONTENTS.get(tensor.datatype)
    if field is None:  # the validator names the datatype it expected
        return []
    values = list(getattr(tensor.contents, field))
    if field != "bytes_contents":
        return values
    texts: list[Any] = []
    for j, value in enumerate(values):
        try:
            texts.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"{where}.contents.bytes_contents[{j}]: not valid UTF-8") from None
    return texts


def infer_response(
    model: str, version: int, request_id: str | None, tensors: Sequence[dict[str, Any]], *, raw: bool
) -> pb.ModelInferResponse:
    """The answer of output tensors as `OutputFormatter.v2` makes them: in `raw_output_contents` when `raw`."""
    response = pb.ModelInferResponse(model_name=model, model_version=str(version), id=request_id or "")
    for tensor in tensors:
        output = response.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        if raw:
            continue
        data = tensor["data"]
        if tensor["datatype"] == "BYTES":
            output.contents.bytes_contents.extend(text.encode("utf-8") for text in data)
        else:
            output.contents.fp32_contents.extend(np.asarray(data, dtype=np.float32).tolist())
    if raw:
        _, chunks = v2_binary(list(tensors), [True] * len(tensors))
        response.raw_output_contents.extend(chunks)
    return response


def model_metadata(name: str, versions: list[str], platform: str, spec: ModelJson) -> pb.ModelMetadataResponse:
    """A model's V2 metadata, the same tensors as the HTTP edge's `GET /v2/models/{name}`."""
    Tensor = pb.ModelMetadataResponse.TensorMetadata
    inputs, outputs = model_tensors(spec)
    return pb.ModelMetadataResponse(
        name=name,
        versions=versions,
        platform=platform,
        inputs=[Tensor(**tensor) for tensor in inputs],
        outputs=[Tensor(**tensor) for tensor in outputs],
    )


def infer_parameters(request: pb.ModelInferRequest) -> dict[str, Any]:
    """The request's parameters as plain values (Triton's sequence parameters among them)."""
    values: dict[str, Any] = {}
    for name, parameter in request.parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[name] = getattr(parameter, choice)
    return values


def set_parameters(target: Any, values: dict[str, Any]) -> None:
    """Set an answer's `parameters` map from plain values: booleans, integers and strings."""
    for name, value in values.items():
        if isinstance(value, bool):
            target[name].bool_param = value
        elif isinstance(value, int):
            target[name].int64_param = value
        else:
            target[name].string_param = str(value)
