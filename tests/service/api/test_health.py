"""Liveness, readiness, metrics, API keys and the OpenAPI schema, over HTTP."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.api.conftest import Server, run_server, sample_value, wait_until
from tests.service.conftest import BuiltRepository


def test_liveness_and_readiness(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json() == {"ready": True}


def test_model_listing_and_metadata(server: Server) -> None:
    listing = httpx.get(f"{server.url}/v1/models").json()
    models = {m["name"]: m for m in listing["models"]}
    assert set(models) == {"equal", "feat", "regress", "tagger", "text"}
    assert models["feat"]["default_version"] == 2
    for version in models["feat"]["versions"]:
        assert version["state"] == "ready" and version["runtime"] == "onnx" and version["device"] == "cpu"
        assert version["device_reason"]
    text = httpx.get(f"{server.url}/v1/models/text").json()
    assert text["task"] == "classification" and text["input"] == {
        "kind": "text",
        "features": None,
        "max_length": 32,
        "vocabulary_size": None,
    }
    assert text["labels"] == ["female", "male"] and text["padding"] == "exact"
    assert httpx.get(f"{server.url}/v1/models/feat/versions/1").json()["version"] == 1
    assert httpx.get(f"{server.url}/v1/models/equal").json()["padding"] == "equal-length"


def test_metrics_cover_requests_latency_batches_padding_queue_and_models(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert (
            client.post("/v1/models/regress/predict", json={"inputs": [[[1, 2, 3]], [[1, 2, 3]] * 5]}).status_code
            == 200
        )
        assert client.post("/v1/models/regress/predict", json={"inputs": [[[1, 2]]]}).status_code == 422
        assert client.post("/v1/models/nope/predict", json={"inputs": []}).status_code == 404
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    metrics = response.text
    regress = {"model": "regress", "version": "1"}
    assert sample_value(metrics, "seqserve_requests_total", {**regress, "status": "200"}) >= 1
    assert sample_value(metrics, "seqserve_requests_total", {**regress, "status": "422"}) >= 1
    assert sample_value(metrics, "seqserve_requests_total", {"model": "", "status": "404"}) >= 1
    for histogram in (
        "seqserve_request_latency_seconds",
        "seqserve_queue_wait_seconds",
        "seqserve_compute_seconds",
        "seqserve_batch_size",
        "seqserve_batch_padded_tokens",
        "seqserve_padding_efficiency",
    ):
        assert sample_value(metrics, f"{histogram}_count", regress) >= 1, histogram
    # 1 + 5 steps: padded to 5 in one batch, or one batch each when two workers are free
    assert sample_value(metrics, "seqserve_batch_padded_tokens_sum", regress) >= 6
    assert (
        0
        < sample_value(metrics, "seqserve_padding_efficiency_sum", regress)
        <= sample_value(metrics, "seqserve_padding_efficiency_count", regress)
    )
    assert sample_value(metrics, "seqserve_queue_depth", regress) == 0
    info = {"model": "feat", "version": "2", "device": "cpu", "runtime": "onnx"}
    assert sample_value(metrics, "seqserve_model_info", info) == 1
    assert sample_value(metrics, "seqserve_ready") == 1


def test_openapi_describes_the_real_shapes(server: Server) -> None:
    schema = httpx.get(f"{server.url}/openapi.json").json()
    components = schema["components"]["schemas"]
    predict = schema["paths"]["/v1/models/{name}/predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictRequest"
    }
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictResponse")
    assert predict["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "inputs" in components["PredictRequest"]["properties"]
    infer = schema["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/V2InferRequest")
    assert "V2InferInput" in components
    refs = re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(schema))
    assert refs and all(ref in components for ref in refs), "dangling $ref"
    assert httpx.get(f"{server.url}/docs").status_code == 200
    assert "securitySchemes" not in schema["components"]  # no key configured: nothing to send
    assert not [op for ops in schema["paths"].values() for op in ops.values() if "security" in op]


@pytest.fixture(scope="module")
def keyed_server(test_repository: BuiltRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("keyed")
    shutil.copytree(test_repository.path / "equal", root / "equal")
    with run_server(root, log_dir=root, env={"SEQSERVE_API_KEY": "s3cret"}) as running:
        yield running


def test_api_key_guards_everything_but_health(keyed_server: Server) -> None:
    url = keyed_server.url
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(url + path).status_code == 200, path
    for path in ("/v1/models", "/metrics", "/v2", "/v2/models/equal"):
        response = httpx.get(url + path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
    denied = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
    assert httpx.get(url + "/v2/models/equal", headers={"X-API-Key": "wrong"}).json()["code"] == "unauthorized"
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert httpx.get(url + "/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200
    body = {"inputs": [[[1, 2, 3]]]}
    assert httpx.post(url + "/predict", json=body).status_code == 401
    assert httpx.post(url + "/predict", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200


def test_openapi_documents_the_key_where_one_is_checked(keyed_server: Server) -> None:
    schema = httpx.get(f"{keyed_server.url}/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    guarded = {f"{m.upper()} {p}" for p, ops in schema["paths"].items() for m, op in ops.items() if "security" in op}
    assert {"GET /metrics", "POST /predict", "GET /v1/models", "POST /v2/models/{name}/infer", "GET /v2"} <= guarded
    assert not {"GET /healthz", "GET /readyz", "GET /v2/health/live", "GET /v2/health/ready"} & guarded
    assert all("401" in schema["paths"][p][m.lower()]["responses"] for m, p in (g.split(" ") for g in guarded))


def test_a_broken_entry_keeps_readiness_off_while_others_serve(
    test_repository: BuiltRepository, tmp_path: Path
) -> None:
    root = tmp_path / "repository"
    shutil.copytree(test_repository.path / "equal", root / "equal")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.json").write_text('{"schema_version": 1}')
    with run_server(root, log_dir=tmp_path, wait_ready=False) as running:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            wait_until(lambda: "loading" not in client.get("/readyz").text)
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert (
                ready.json()["error"]["code"] == "not_ready" and "broken/1 failed" in ready.json()["error"]["message"]
            )
            assert client.get("/v2/health/ready").status_code == 503
            # every 503 tells the client when to retry: readiness, and a version that failed to load
            assert ready.headers["retry-after"] == "1"
            assert client.get("/v2/health/ready").headers["retry-after"] == "1"
            model_ready = client.get("/v2/models/broken/ready")
            assert model_ready.status_code == 503 and model_ready.json()["code"] == "model_not_ready"
            assert "broken/1 failed to load" in model_ready.json()["error"]
            assert model_ready.headers["retry-after"] == "1"
            assert client.get("/healthz").status_code == 200
            listing = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
            assert listing["broken"]["versions"][0]["state"] == "failed"
            assert "model.json is invalid" in listing["broken"]["versions"][0]["error"]
            assert client.post("/v1/models/equal/predict", json={"inputs": [[[1, 2, 3]]]}).status_code == 200
            failed = client.post("/v1/models/broken/predict", json={"inputs": [[[1, 2, 3]]]})
            assert failed.status_code == 503 and failed.json()["error"]["code"] == "model_not_ready"
        assert "broken/1 failed to load" in running.log()
