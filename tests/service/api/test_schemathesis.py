"""OpenAPI-driven fuzzing: schemathesis reads the running server's /openapi.json and sends what it
documents, and what it does not, to every operation.

One server over the test repository, with an API key configured so that the auth paths are part of
the run (schemathesis sends the key, and probes each answered operation without it and with a wrong
one). Whatever arrives: never a 5xx, every response matches the schema where the server documents
one, every error is in the contract's shape with neither a traceback nor a file path, and afterwards
a good request is still answered exactly.

The run is deterministic and bounded for CI (`SEQSERVE_SCHEMATHESIS_EXAMPLES` per operation and
phase, default below); the totals are printed at the end of the module (`pytest -s`). Each defect
the run found stays below as an explicit request.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.api.conftest import Server, run_server, softmax
from tests.service.conftest import BuiltRepository

API_KEY = "schemathesis-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
BINARY_HEADER = "Inference-Header-Content-Length"
EXAMPLES = int(os.environ.get("SEQSERVE_SCHEMATHESIS_EXAMPLES", "60"))
MODELS = ["feat", "tagger", "regress", "equal", "text"]
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def schema_server(test_repository: BuiltRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the whole module: a defect one case leaves behind shows up in the next.
    Its access log counts every request, schemathesis's own probes included."""
    log_dir = tmp_path_factory.mktemp("schemathesis")
    with run_server(
        test_repository.path, "--max-delay-ms", "1", "--access-log", log_dir=log_dir, env={"SEQSERVE_API_KEY": API_KEY}
    ) as running:
        yield running
        log = running.log()
    # NOTE: no client input may reach the internal-error path.
    assert "internal error" not in log and "Traceback" not in log, log[-4000:]


def access_log(server: Server, since: int = 0) -> tuple[int, int, int]:
    """(requests, of which 5xx, log length): what the server answered after log offset `since`."""
    log = server.log()
    answered = log[since:]
    return answered.count('HTTP/1.1" '), answered.count('HTTP/1.1" 5'), len(log)


@pytest.fixture(scope="module")
def api_schema(schema_server: Server) -> schemathesis.BaseSchema:
    raw = httpx.get(f"{schema_server.url}/openapi.json", timeout=10).json()
    _hint_known_models(raw)
    config = SchemathesisConfig.from_dict(
        {
            "base-url": schema_server.url,
            "seed": 20240601,
            "generation": {"mode": "all", "max-examples": EXAMPLES, "deterministic": True},
            "phases": {"stateful": {"enabled": False}},
            # NOTE: which schema-valid bodies a model accepts depends on the model the path names (its
            # feature count, text or features); the schema cannot say, and documents 422 for the rest.
            "checks": {"positive_data_acceptance": {"enabled": False}},
            "auth": {"openapi": {"bearer": {"bearer": API_KEY}, "apiKey": {"api_key": API_KEY}}},
        }
    )
    loaded = schemathesis.openapi.from_dict(raw, config=config)

    @loaded.hook
    def before_generate_path_parameters(context: schemathesis.HookContext, strategy: Any) -> Any:
        # Names drawn from the schema alone almost never exist: mix in the repository's own.
        return strategy.flatmap(_or_known_models)

    TALLY["operations"] = sum(1 for _ in loaded.get_all_operations())
    TALLY["log_offset"] = access_log(schema_server)[2]
    return loaded


def _hint_known_models(raw: dict[str, Any]) -> None:
    """Give each `{name}` (and `{version}`) an example from the test repository so that the
    coverage phase's cases reach the model rather than a 404: `tagger` where a body is sent (it
    takes 4 features, as the schema's own body examples do), the other models in turn elsewhere."""
    others = itertools.cycle(["feat", "regress", "equal", "text"])
    for _, operations in sorted(raw["paths"].items()):
        for operation in operations.values():
            model = "tagger" if "requestBody" in operation else next(others)
            examples = {"name": model, "version": "2" if model == "feat" else "1"}
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in examples:
                    parameter["example"] = examples[parameter["name"]]


KNOWN = {"name": st.sampled_from(MODELS), "version": st.sampled_from(["1", "2"])}


def _or_known_models(params: Any) -> st.SearchStrategy[Any]:
    if not isinstance(params, dict) or not set(params) <= set(KNOWN):
        return st.just(params)
    return st.one_of(st.just(params), st.fixed_dictionaries({key: KNOWN[key] for key in params}))


def _json_without_binary_header(case: Case) -> None:
    """A JSON body beside a generated `Inference-Header-Content-Length` is refused (400) for the
    header's length before the body is read: unless the case is about its headers, send the JSON
    as plain JSON so that the body's variations reach validation."""
    headers = case.headers or {}
    about_headers = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
    if BINARY_HEADER in headers and case.media_type == "application/json" and not about_headers:
        del headers[BINARY_HEADER]


def error_shape(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A 4xx in the contract's shape (the Open Inference Protocol's under /v2), carrying neither a
    traceback nor a file path."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), response.headers
    body = response.json()
    if case.formatted_path == "/v2" or case.formatted_path.startswith("/v2/"):
        assert isinstance(body, dict) and set(body) == {"error", "code"}, body
        message = body["error"]
    else:
        assert isinstance(body, dict) and set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        message = body["error"]["message"]
    assert isinstance(message, str) and message, body
    assert "Traceback" not in message and "/work/" not in message and ".py" not in message, message
    return None


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _legacy_node_id(request: pytest.FixtureRequest) -> None:
    # NOTE: schemathesis 4.32.5's lazy schema reads and rewrites `node._nodeid`, which pytest 9.2
    # no longer has (the node id lives in `_id`); give it the attribute. Per-operation reports
    # still name the operation, through pytest's subtests.
    request.node._nodeid = request.node.nodeid


@schema.parametrize()
def test_every_operation(case: Case) -> None:
    TALLY["cases"] += 1
    _json_without_binary_header(case)
    case.call_and_validate(additional_checks=[error_shape], timeout=30)


def test_schemathesis_ran(schema_server: Server, record_property: Any) -> None:
    """Right after the run: its totals, printed and recorded (junit properties)."""
    requests, errors, _ = access_log(schema_server, TALLY["log_offset"])
    summary = (
        f"schemathesis: {TALLY['operations']} operations, {TALLY['cases']} cases, {requests} requests, "
        f"{errors} server errors"
    )
    print(f"\n{summary}")
    for key, value in (
        ("operations", TALLY["operations"]),
        ("cases", TALLY["cases"]),
        ("requests", requests),
        ("server_errors", errors),
    ):
        record_property(f"schemathesis_{key}", value)
    assert TALLY["operations"] == 24, summary  # every route of the served schema; a new one is fuzzed too
    assert TALLY["cases"] > TALLY["operations"] and requests >= TALLY["cases"] and errors == 0, summary


# -- every defect the run found, kept as the exact request ------------------------

V2_TAGGER_INPUT = {"name": "input", "datatype": "FP32", "shape": [1, 2, 4], "data": [0.1, 0.2, 0.3, 0.4] * 2}


@pytest.mark.parametrize(
    ("method", "path", "path_parameters", "headers", "body", "status", "message"),
    [
        # /metrics answered 401 without a key, but documented no 401 (status_code_conformance).
        ("GET", "/metrics", {}, {"Authorization": "Bearer wrong"}, None, 401, "a valid API key is required"),
        # Errors under /v2 are the Open Inference Protocol's `{"error": str, "code": str}`; the schema
        # documented seqserve's `{"error": {"code", "message"}}` for them (response_schema_conformance).
        ("GET", "/v2", {}, {"X-API-Key": "wrong"}, None, 401, "a valid API key is required"),
        ("GET", "/v2/models/{name}", {"name": "nope"}, AUTH, None, 404, "model 'nope' not found"),
        (
            "GET",
            "/v2/models/{name}/versions/{version}/ready",
            {"name": "feat", "version": "9"},
            AUTH,
            None,
            404,
            "has no version 9",
        ),
        (
            "POST",
            "/v2/models/{name}/infer",
            {"name": "tagger"},
            AUTH,
            {"inputs": [{**V2_TAGGER_INPUT, "shape": [1, 2]}]},
            422,
            "inputs[0]: shape [1, 2]",
        ),
        # A `parameters` that is not an object was ignored and the request answered 200
        # (negative_data_rejection); now a 422 that names where.
        (
            "POST",
            "/v2/models/{name}/infer",
            {"name": "tagger"},
            AUTH,
            {"id": None, "inputs": [V2_TAGGER_INPUT], "outputs": None, "parameters": [None, None]},
            422,
            "parameters: expected an object, got array",
        ),
        (
            "POST",
            "/v2/models/{name}/infer",
            {"name": "tagger"},
            AUTH,
            {"inputs": [{**V2_TAGGER_INPUT, "parameters": "binary"}]},
            422,
            "inputs[0].parameters: expected an object, got string",
        ),
        (
            "POST",
            "/v2/models/{name}/versions/{version}/infer",
            {"name": "tagger", "version": "1"},
            AUTH,
            {"inputs": [V2_TAGGER_INPUT], "outputs": [{"name": "label", "parameters": 0}]},
            422,
            "outputs[0].parameters: expected an object, got number",
        ),
    ],
)
def test_found_defects_stay_fixed(
    api_schema: schemathesis.BaseSchema,
    method: str,
    path: str,
    path_parameters: dict[str, str],
    headers: dict[str, str],
    body: Any,
    status: int,
    message: str,
) -> None:
    operation = api_schema[path][method]
    if body is None:
        case = operation.Case(path_parameters=path_parameters, headers=headers)
    else:
        case = operation.Case(
            path_parameters=path_parameters, headers=headers, body=body, media_type="application/json"
        )
    response = case.call(timeout=30)
    assert response.status_code == status and message in response.text, response.text
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            error_shape,
        ],
    )


def test_a_good_predict_is_still_answered_exactly(schema_server: Server, test_repository: BuiltRepository) -> None:
    """Last in the module: after everything above, the default model answers as its reference."""
    seq = np.random.default_rng(7).normal(size=(6, 3)).round(5).tolist()  # `equal`: 3 features
    response = httpx.post(f"{schema_server.url}/predict", json={"inputs": [seq]}, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "equal" and len(body["outputs"]) == 1
    expected = softmax(test_repository.references["equal"](seq))
    np.testing.assert_allclose(body["outputs"][0]["probabilities"], expected, atol=1e-4, rtol=0)
