"""model.json, schema_version 1: the contract between `seqserve export`, which writes
it through `ModelJson.to_json`, and the server, which reads it through the same class.

Only what the server reads is typed here; informational sections (architecture,
family, metrics, parity, provenance) are kept as extra fields, unread.
"""

from __future__ import annotations

import json
import re
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION: Final = 1

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,8}$")
# A format entry names a file inside the entry's own directory, nothing else.
_FILE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")

Task = Literal["classification", "regression", "tagging"]
InputKind = Literal["features", "text", "tokens"]
InputDtype = Literal["float32", "int64", "int32"]
Padding = Literal["exact", "equal-length"]
RuntimeKind = Literal["onnx", "torchscript"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TokenizerJson(_Section):
    """``char``: a token per character; ``word``: ``str.split()``; ``regex``: ``re.findall(pattern)``.
    Lowercased first only when ``lowercase``; id = position in ``vocabulary``."""

    type: Literal["char", "word", "regex"]
    lowercase: bool = True
    vocabulary: tuple[str, ...] = Field(min_length=2)
    padding_id: int = Field(ge=0)
    unknown_id: int = Field(ge=0)
    pattern: str | None = None
    unknown: Literal["map", "reject"] = "map"
    """A character outside the vocabulary: `map` it to `unknown_id`, or `reject` the text (422 naming it)."""

    @model_validator(mode="after")
    def _ids_in_vocabulary(self) -> TokenizerJson:
        size = len(self.vocabulary)
        if self.padding_id >= size or self.unknown_id >= size:
            raise ValueError(f"padding_id and unknown_id must be < vocabulary size {size}")
        if self.type == "regex":
            try:
                re.compile(self.pattern or "")
            except re.error as exc:
                raise ValueError(f"pattern: not a regular expression ({exc})") from None
            if not self.pattern:
                raise ValueError("pattern: a regex tokenizer needs its pattern")
        return self


class InputJson(_Section):
    kind: InputKind
    features: int | None = Field(default=None, ge=1, le=1 << 20)
    max_length: int = Field(ge=1, le=1 << 20)
    tokenizer: TokenizerJson | None = None
    vocabulary_size: int | None = Field(default=None, ge=2, le=1 << 31)
    """kind `tokens`: ids run from 0 to vocabulary_size - 1 (the rows of the graph's embedding)."""
    padding_id: int = Field(default=0, ge=0)
    """kind `tokens`: the id padded sequences are filled with."""

    @model_validator(mode="after")
    def _kind_fields(self) -> InputJson:
        if self.kind == "features" and self.features is None:
            raise ValueError("input.features is required for kind 'features'")
        if self.kind == "text" and self.tokenizer is None:
            raise ValueError("input.tokenizer is required for kind 'text'")
        if self.kind == "tokens":
            if self.vocabulary_size is None:
                raise ValueError("input.vocabulary_size is required for kind 'tokens'")
            if self.padding_id >= self.vocabulary_size:
                raise ValueError(f"input.padding_id must be < vocabulary_size {self.vocabulary_size}")
        if self.kind != "features" and self.features is not None:
            raise ValueError(f"input.features is for kind 'features', not '{self.kind}'")
        return self

    @property
    def pad_value(self) -> float | int:
        """What padded steps are filled with: 0.0, or the padding token id."""
        if self.tokenizer is not None:
            return self.tokenizer.padding_id
        return self.padding_id if self.kind == "tokens" else 0.0


class GraphJson(_Section):
    input: str = Field(min_length=1)
    lengths: str | None = None
    output: str = Field(min_length=1)
    input_dtype: InputDtype
    output_activation: Literal["softmax", "none", "exp"] = "none"
    """What the server applies to the graph's output to get probabilities: ``exp`` when
    the graph answers log-probabilities (a module ending in ``log_softmax``)."""


class FormatsJson(_Section):
    onnx: str | None = Field(default=None, pattern=_FILE_NAME_PATTERN.pattern)
    torchscript: str | None = Field(default=None, pattern=_FILE_NAME_PATTERN.pattern)


class StreamFormatsJson(_Section):
    onnx: str | None = Field(default=None, pattern=_FILE_NAME_PATTERN.pattern)
    torchscript: str | None = Field(default=None, pattern=_FILE_NAME_PATTERN.pattern)


class StreamingJson(_Section):
    """The stateful graphs that serve a stream chunk by chunk (unidirectional models).

    Signature: ``(input [B, T, ...], lengths int64 [B], state_in float32 [B, S])
    -> (output, state_out float32 [B, S])``. An all-zero ``state_in`` starts a
    stream; ``state_out`` is each row's state after its last valid step. ``output``
    is ``[B, O]``, the answer as if the stream ended at that step, or, when
    ``per_step``, ``[B, T, O]`` with zeros past each length; it is in the same
    units as the whole-sequence graph's output (``graph.output_activation`` applies).
    """

    formats: StreamFormatsJson
    state_size: int = Field(ge=1, le=1 << 24)
    per_step: bool = False
    input: str = Field(default="input", min_length=1)
    lengths: str = Field(default="lengths", min_length=1)
    state_in: str = Field(default="state_in", min_length=1)
    output: str = Field(default="output", min_length=1)
    state_out: str = Field(default="state_out", min_length=1)

    @model_validator(mode="after")
    def _a_file(self) -> StreamingJson:
        if self.formats.onnx is None and self.formats.torchscript is None:
            raise ValueError("streaming.formats lists no model file")
        return self


class ModelJson(BaseModel):
    """model.json, schema_version 1. Informational sections are kept, unread."""

    model_config = ConfigDict(frozen=True, extra="allow")

    schema_version: Literal[1]
    name: str = Field(pattern=NAME_PATTERN.pattern)
    version: int = Field(ge=1)
    task: Task
    description: str = ""
    input: InputJson
    labels: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    graph: GraphJson
    padding: Padding
    formats: FormatsJson
    streaming: StreamingJson | None = None
    """Present when the version can serve streams; absent for bidirectional models."""

    @model_validator(mode="after")
    def _consistent(self) -> ModelJson:
        if self.task in ("classification", "tagging") and not self.labels:
            raise ValueError(f"labels are required for task '{self.task}'")
        expected = ("float32",) if self.input.kind == "features" else ("int64", "int32")
        if self.graph.input_dtype not in expected:
            dtypes = " or ".join(map(repr, expected))
            raise ValueError(f"input kind '{self.input.kind}' needs graph.input_dtype {dtypes}")
        if self.formats.onnx is None and self.formats.torchscript is None:
            raise ValueError("formats lists no model file")
        return self

    @property
    def can_stream(self) -> bool:
        return self.streaming is not None

    @property
    def uses_lengths(self) -> bool:
        return self.graph.lengths is not None

    def to_json(self) -> str:
        """The text of model.json, informational sections included."""
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def validation_problems(exc: ValidationError) -> str:
    """A model.json validation error on one line: `field.path: message; ...`."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
