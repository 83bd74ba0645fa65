"""model.json documents for tests that need a spec but no model file."""

from __future__ import annotations

from typing import Any

from service.model_json import ModelJson

VOCABULARY = ["<pad>", "<unk>", "a", "b", "c", " "]


def spec_document(kind: str = "features", task: str = "classification", **overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schema_version": 1,
        "name": "m",
        "version": 1,
        "task": task,
        "input": {"kind": "features", "features": 3, "max_length": 10, "tokenizer": None},
        "labels": ["x", "y"] if task != "regression" else None,
        "output_names": ["v"] if task == "regression" else None,
        "graph": {
            "input": "input",
            "lengths": "lengths",
            "output": "logits",
            "input_dtype": "float32",
            "output_activation": "softmax" if task != "regression" else "none",
        },
        "padding": "exact",
        "formats": {"onnx": "model.onnx"},
    }
    if kind == "text":
        document["input"] = {
            "kind": "text",
            "features": None,
            "max_length": 8,
            "tokenizer": {
                "type": "char",
                "lowercase": True,
                "vocabulary": VOCABULARY,
                "padding_id": 0,
                "unknown_id": 1,
            },
        }
        document["graph"]["input_dtype"] = "int64"
    document.update(overrides)
    return document


def make_spec(kind: str = "features", task: str = "classification", **overrides: Any) -> ModelJson:
    return ModelJson.model_validate(spec_document(kind, task, **overrides))
