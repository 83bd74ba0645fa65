"""Request and response shapes, for the OpenAPI schema.

Bodies are parsed with orjson and validated by `service.validation` (fast,
with errors that name the offending index); these models document them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema


class ErrorBody(BaseModel):
    code: str = Field(examples=["invalid_input"])
    message: str = Field(examples=["inputs[3][7]: expected 12 features, got 11"])


class ErrorResponse(BaseModel):
    error: ErrorBody


class V2ErrorResponse(BaseModel):
    """Errors under /v2: the Open Inference Protocol's message string, plus seqserve's code."""

    error: str = Field(examples=["inputs[0].shape[2]: expected 12 features, got 11"])
    code: str = Field(examples=["invalid_input"])


# -- /predict ------------------------------------------------------------------


class PredictRequest(BaseModel):
    inputs: list[list[list[float]] | str | list[int]] = Field(
        min_length=1,
        description="Sequences: for feature models each a list of time steps, each a list of `features` numbers; "
        "for text models each a string; for token models each a list of token ids (0 to vocabulary_size - 1).",
        examples=[[[[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]]],
    )


class ClassificationOutput(BaseModel):
    label: str
    probabilities: list[float] = Field(description="Aligned with the model's labels.")


class TaggingOutput(BaseModel):
    labels: list[str] = Field(description="One label per step of the sequence.")
    probabilities: list[list[float]]


class RegressionOutput(BaseModel):
    values: list[float] = Field(description="Aligned with the model's output_names.")


class PredictResponse(BaseModel):
    model: str
    version: int
    outputs: list[ClassificationOutput | TaggingOutput | RegressionOutput] = Field(
        description="One output per input sequence, in the same order."
    )


# -- /v1/models ------------------------------------------------------------------


class VersionInfo(BaseModel):
    version: int
    state: Literal["loading", "ready", "failed", "unloading", "unloaded"]
    runtime: str | None = None
    device: str | None = None
    device_reason: str | None = None
    error: str | None = None


class ModelSummary(BaseModel):
    name: str
    default_version: int | None
    versions: list[VersionInfo]


class ModelList(BaseModel):
    default_model: str | None
    models: list[ModelSummary]


class InputInfo(BaseModel):
    kind: Literal["features", "text", "tokens"]
    features: int | None
    max_length: int
    vocabulary_size: int | None = Field(default=None, description="Token models: ids run from 0 to this - 1.")


class ModelMetadata(BaseModel):
    name: str
    version: int
    default_version: int | None
    task: Literal["classification", "regression", "tagging"]
    description: str
    input: InputInfo
    labels: list[str] | None
    output_names: list[str] | None
    padding: Literal["exact", "equal-length"]
    streaming: bool = Field(
        default=False, description="Whether this version serves streams (chunks with state kept between them)."
    )
    versions: list[VersionInfo]


# -- health ------------------------------------------------------------------------


class LiveResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    reasons: list[str] | None = None
    """With strict readiness off: the model versions that failed to load and are not served."""


# -- Open Inference Protocol V2 ------------------------------------------------------


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool
    reasons: list[str] | None = None
    """With strict readiness off: the model versions that failed to load and are not served."""


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2RepositoryIndexRequest(BaseModel):
    ready: bool = Field(default=False, description="List only the versions ready for inference.")


class V2RepositoryIndexEntry(BaseModel):
    """One model version in the repository, in the shape of Triton's model repository extension."""

    name: str
    version: str
    state: Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]
    reason: str = Field(description="Why it is not ready: the load error, `unloaded`, or `not loaded`; else empty.")


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


def _required_unless_binary(schema: JsonDict) -> None:
    schema.pop("default")  # required unless binary; never null


class V2InferInput(BaseModel):
    name: str = Field(
        description="'input' (FP32 [B, T, F], or INT64/INT32 [B, T] token ids) and optional 'lengths' (INT64 [B]); "
        "'text' (BYTES [B])."
    )
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: Literal["FP32", "INT64", "INT32", "BYTES"]
    data: list[Any] | SkipJsonSchema[None] = Field(
        default=None,
        description="Row-major, flat or nested. Omitted when `parameters.binary_data_size` puts the tensor "
        "in the binary data after the JSON (binary tensor data extension).",
        json_schema_extra=_required_unless_binary,
    )
    parameters: dict[str, Any] | None = None


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": [1, 2, 4],
                            "data": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                        },
                    ],
                }
            ]
        }
    )

    id: str | None = None
    inputs: list[V2InferInput]
    outputs: list[V2RequestedOutput] | None = Field(default=None, description="Omitted: every output.")
    parameters: dict[str, Any] | None = None


class V2InferOutput(BaseModel):
    name: str
    datatype: Literal["FP32", "BYTES"]
    shape: list[int]
    data: list[Any] | SkipJsonSchema[None] = Field(
        default=None,
        description="Row-major, flat. Omitted when `parameters.binary_data_size` puts the tensor in the binary "
        "data after the JSON (binary tensor data extension).",
        json_schema_extra=_required_unless_binary,
    )
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size`: bytes of this tensor in the binary data, when there."
    )


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2InferOutput]


class StreamChunkRequest(BaseModel):
    steps: list[list[float]] | str = Field(
        description="The chunk's time steps (each a list of `features` numbers), or its text for text models.",
        examples=[[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]],
    )
    start: bool = Field(default=False, description="This chunk starts the stream (from a zero state).")
    end: bool = Field(default=False, description="This chunk ends the stream; its state is dropped.")
    offset: int | None = Field(
        default=None,
        ge=0,
        description="The stream step this chunk starts at. With it a retried chunk is never applied twice: "
        "answered again if it was, refused with 409 if the stream stands elsewhere. Absent: where the stream stands.",
    )


class StreamChunkResponse(BaseModel):
    model: str
    version: int
    stream: str
    offset: int = Field(description="The step this chunk started at.")
    position: int = Field(description="Steps applied so far: the offset of the next chunk.")
    ended: bool
    replayed: bool = Field(description="This chunk had been applied already: its answer is the one cached then.")
    output: ClassificationOutput | TaggingOutput | RegressionOutput = Field(
        description="The answer as if the stream ended at the chunk's last step (per-step models: every step's)."
    )


class StreamStatus(BaseModel):
    model: str
    version: int = Field(description="The version the stream runs on.")
    stream: str
    status: Literal["live", "ended", "expired"]
    position: int = Field(description="Steps applied so far: the offset of the next chunk.")
    last_offset: int = Field(description="Where the last applied chunk started.")


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    PredictRequest,
    V2InferRequest,
    V2RepositoryIndexRequest,
    StreamChunkRequest,
)


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON body of `model` (listed in REQUEST_MODELS)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def v2_infer_body() -> dict[str, Any]:
    """`openapi_extra` of V2 inference: a V2InferRequest, or under the binary tensor data extension
    that JSON followed by the tensors' bytes, its length in `Inference-Header-Content-Length`
    (then any content type is taken); the answer likewise when an output is asked for in binary."""
    extra = request_body(V2InferRequest)
    binary = {"type": "string", "format": "binary", "description": "The JSON request, then the tensors' bytes."}
    extra["requestBody"]["content"]["application/octet-stream"] = {"schema": binary}
    extra["parameters"] = [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "schema": {"type": "integer", "minimum": 1},
            "description": "Binary tensor data extension: bytes of JSON at the start of the body.",
        }
    ]
    # NOTE: merged into the 200 answer FastAPI documents from the response model (application/json).
    extra["responses"] = {
        "200": {
            "content": {
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "When an output is asked for in binary (its `parameters.binary_data`, or "
                        "the request's `parameters.binary_data_output`): the V2InferResponse JSON, then those "
                        "outputs' bytes in output order.",
                    }
                }
            },
            "headers": {
                "Inference-Header-Content-Length": {
                    "schema": {"type": "integer", "minimum": 1},
                    "description": "Binary tensor data extension: bytes of JSON at the start of the body "
                    "(only on an application/octet-stream answer).",
                }
            },
        }
    }
    return extra


_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Body is not valid JSON",
    401: "Missing or wrong API key (only when the server has one configured)",
    404: "Unknown model or version",
    413: "Body over the size limit",
    415: "Content type is not JSON",
    422: "Invalid input; the message names the offending index",
    500: "Internal error; the message holds an error id found in the logs",
    503: "Overloaded, draining or model not ready; see Retry-After",
    504: "No answer within the request timeout",
    409: "The chunk does not start where the stream stands; the message names the step it expects",
    429: "The live-stream limit is reached; see Retry-After",
}
INFERENCE_ERRORS = (400, 401, 404, 413, 415, 422, 500, 503, 504)
"""What a predict or infer request can be answered with besides 200."""
STREAM_ERRORS = (409, 429)
"""What a stream chunk can be answered with besides INFERENCE_ERRORS."""
MODEL_ERRORS = (401, 404, 500, 503)
"""What a read of one model's metadata or readiness can be answered with besides 200."""


def errors(*statuses: int, v2: bool = False) -> dict[int | str, dict[str, Any]]:
    """`responses` documenting error statuses in the shape the route answers with: seqserve's
    `{"error": {"code", "message"}}`, or under /v2 the Open Inference Protocol's `{"error", "code"}`."""
    model = V2ErrorResponse if v2 else ErrorResponse
    return {status: {"model": model, "description": _ERROR_DESCRIPTIONS[status]} for status in statuses}
