"""The model repository extension over HTTP, and version swaps under load with no failed request.

Closed-loop load (bounded in count and time) on `/v1/models/swap/predict`, no version pinned, while a
second version is published on disk and loaded (it becomes the default), then at once the first is
unloaded, with requests sent to it just before still in flight: by the load and unload routes, then by
the repository poll (the new directory published and the old one removed together). Every request
must get 200 with the answer of one version or the other, computed beforehand from each version's own
module.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bench.client import Connection, encode_requests
from tests.service.api.conftest import Server, run_server
from tests.service.conftest import TwoVersions

TOLERANCE = 1e-4
CONCURRENCY = 6
MAX_REQUESTS = 30_000  # bounds the load whatever happens
MAX_SECONDS = 90.0
PER_PHASE = 500  # answers of each phase before the next step
INFERENCE, ADMIN = {"X-API-Key": "inference-key"}, {"X-API-Key": "admin-key"}
KEYS = {"SEQSERVE_API_KEY": "inference-key", "SEQSERVE_ADMIN_API_KEY": "admin-key"}


def publish(two_versions: TwoVersions, root: Path, version: int) -> None:
    """Into a hidden folder, then renamed into place: a poll never sees half a version."""
    hidden = root / "swap" / f".{version}"
    shutil.copytree(two_versions.staging / "swap" / str(version), hidden)
    hidden.rename(root / "swap" / str(version))


def repository_with_version_1(two_versions: TwoVersions, tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    (root / "swap").mkdir(parents=True)
    publish(two_versions, root, 1)
    return root


@dataclass
class Tally:
    sent: int = 0
    by_version: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    readiness: Counter[int] = field(default_factory=Counter)
    states_seen: set[tuple[int, str]] = field(default_factory=set)


async def swap_under_load(
    server: Server,
    two_versions: TwoVersions,
    swap: Callable[[httpx.AsyncClient, Tally], Awaitable[None]],
    headers: dict[str, str] | None = None,
) -> Tally:
    """Run `swap` while CONCURRENCY connections each send their next request once the last is answered."""
    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=(int(n), two_versions.features)).round(4).tolist() for n in rng.integers(1, 21, 16)]
    expected = {v: [two_versions.expected[v](seq) for seq in inputs] for v in (1, 2)}
    assert all(np.abs(expected[1][i] - expected[2][i]).max() > 10 * TOLERANCE for i in range(len(inputs)))
    port = int(server.url.rsplit(":", 1)[1])
    raw = encode_requests("/v1/models/swap/predict", [json.dumps({"inputs": [seq]}).encode() for seq in inputs], port)
    if headers:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        raw = [r.replace(b"\r\n", b"\r\n" + extra, 1) for r in raw]
    tally, done = Tally(), asyncio.Event()

    async def client(k: int) -> None:
        connection = await Connection.open(port)
        try:
            while not done.is_set() and tally.sent < MAX_REQUESTS:
                i = (k + tally.sent) % len(inputs)
                tally.sent += 1
                status, body = await connection.request(raw[i])
                answer = json.loads(body)
                if status != 200:
                    tally.failures.append(f"{status}: {answer}")
                    continue
                version = answer["version"]
                got = np.asarray(answer["outputs"][0]["probabilities"])
                if version not in expected or np.abs(got - expected[version][i]).max() > TOLERANCE:
                    tally.failures.append(f"version {version}: wrong answer for input {i}")
                tally.by_version[version] += 1
        finally:
            connection.close()

    async def watch(http: httpx.AsyncClient) -> None:
        while not done.is_set():
            tally.readiness[(await http.get("/readyz")).status_code] += 1
            listing = (await http.get("/v1/models")).json()
            tally.states_seen |= {(v["version"], v["state"]) for m in listing["models"] for v in m["versions"]}
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=headers) as http:
        clients = [asyncio.create_task(client(k)) for k in range(CONCURRENCY)]
        watcher = asyncio.create_task(watch(http))
        try:
            await asyncio.wait_for(swap(http, tally), MAX_SECONDS)
        finally:
            done.set()
            await asyncio.gather(*clients, watcher)
    return tally


async def until(condition: Callable[[], Awaitable[bool] | bool], timeout: float = 60.0) -> None:
    """A guard against hanging, not a speed check."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if await result if isinstance(result, Awaitable) else result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


def report(name: str, tally: Tally) -> None:
    print(
        f"\n{name}: {tally.sent} requests, {len(tally.failures)} failed, answers by version "
        f"{dict(sorted(tally.by_version.items()))}, /readyz {dict(tally.readiness)}"
    )


def test_swap_by_the_load_and_unload_routes_fails_no_request(two_versions: TwoVersions, tmp_path: Path) -> None:
    root = repository_with_version_1(two_versions, tmp_path)

    async def swap(http: httpx.AsyncClient, tally: Tally) -> None:
        await until(lambda: tally.by_version[1] >= PER_PHASE)
        publish(two_versions, root, 2)
        load = asyncio.create_task(http.post("/v2/repository/models/swap/load", headers=ADMIN))
        await asyncio.sleep(0.05)
        # NOTE: sent at once, maybe while the load still runs: changes run one at a time, so the unload
        # starts only once version 2 serves. (The poll test below unloads with requests still in flight.)
        unloaded = await http.post("/v2/repository/models/swap/versions/1/unload", headers=ADMIN)
        loaded = await load
        assert loaded.status_code == 200 and unloaded.status_code == 200, (loaded.text, unloaded.text)
        mark = tally.by_version[2]
        await until(lambda: tally.by_version[2] >= mark + PER_PHASE)

    with run_server(root, "--repository-api", "--max-delay-ms", "2", log_dir=tmp_path, env=KEYS) as server:
        tally = asyncio.run(swap_under_load(server, two_versions, swap, INFERENCE))
        report("swap by the routes", tally)
        assert tally.failures == [] and tally.by_version[1] >= PER_PHASE and tally.by_version[2] >= PER_PHASE
        assert set(tally.readiness) == {200}, "readiness stays on throughout the swap"
        assert {(1, "ready"), (2, "ready"), (1, "unloaded")} <= tally.states_seen
        with httpx.Client(base_url=server.url, timeout=30, headers=INFERENCE) as http:
            index = http.post("/v2/repository/index", json={}).json()
            assert index == [
                {"name": "swap", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
                {"name": "swap", "version": "2", "state": "READY", "reason": ""},
            ]
            assert http.post("/v2/repository/index", json={"ready": True}).json() == index[1:]
            assert http.get("/v2/repository/index?ready=true").json() == index[1:]
            pinned = http.post("/v1/models/swap/versions/1/predict", json={"inputs": [[[0.0] * 5]]})
            assert pinned.status_code == 404 and pinned.json()["error"]["code"] == "version_not_found"
            assert "is unloaded" in pinned.json()["error"]["message"]
            listing = http.get("/v1/models").json()["models"][0]
            assert listing["default_version"] == 2
            assert [(v["version"], v["state"]) for v in listing["versions"]] == [(1, "unloaded"), (2, "ready")]
            metrics = http.get("/metrics").text
            assert 'seqserve_model_info{device="cpu",model="swap",runtime="onnx",version="2"} 1.0' in metrics
            assert 'model="swap",runtime="onnx",version="1"' not in metrics.split("seqserve_model_info", 1)[1]
        assert "unloaded swap/1" in server.log()


def test_swap_by_the_repository_poll_fails_no_request(two_versions: TwoVersions, tmp_path: Path) -> None:
    root = repository_with_version_1(two_versions, tmp_path)

    async def swap(http: httpx.AsyncClient, tally: Tally) -> None:
        await until(lambda: tally.by_version[1] >= PER_PHASE)
        publish(two_versions, root, 2)
        shutil.rmtree(root / "swap" / "1")  # both at once: the poll loads 2, then unloads 1

        async def gone() -> bool:
            versions = (await http.get("/v1/models/swap")).json()["versions"]
            return [v["version"] for v in versions] == [2]

        await until(gone)
        mark = tally.by_version[2]
        await until(lambda: tally.by_version[2] >= mark + PER_PHASE)

    flags = ("--repository-poll-seconds", "0.2", "--max-delay-ms", "2")
    with run_server(root, *flags, log_dir=tmp_path) as server:
        tally = asyncio.run(swap_under_load(server, two_versions, swap))
        report("swap by the poll", tally)
        assert tally.failures == [] and tally.by_version[1] >= PER_PHASE and tally.by_version[2] >= PER_PHASE
        assert set(tally.readiness) == {200}
        assert "repository/models" not in str(httpx.get(f"{server.url}/openapi.json").json()["paths"])


def test_the_management_routes_are_off_by_default(server: Server) -> None:
    for path in ("/v2/repository/models/feat/load", "/v2/repository/models/feat/versions/1/unload"):
        response = httpx.post(server.url + path, timeout=10)
        assert response.status_code == 404 and response.json()["code"] == "not_found"
    index = httpx.get(f"{server.url}/v2/repository/index", timeout=10).json()
    assert {"name": "feat", "version": "2", "state": "READY", "reason": ""} in index
    assert httpx.get(f"{server.url}/v1/models/feat", timeout=10).json()["default_version"] == 2
    other = httpx.request("OPTIONS", f"{server.url}/v2/repository/index", timeout=10)
    assert other.status_code == 405 and other.headers["allow"] == "GET, POST" and other.json()["code"]


@pytest.fixture(scope="module")
def keyed(two_versions: TwoVersions, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp_path = tmp_path_factory.mktemp("keyed")
    root = repository_with_version_1(two_versions, tmp_path)
    with run_server(root, "--repository-api", log_dir=tmp_path, env=KEYS) as server:
        yield server, root


def test_the_admin_key_guards_load_and_unload(keyed: tuple[Server, Path]) -> None:
    server, _ = keyed
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for headers in ({}, INFERENCE, {"Authorization": "Bearer wrong"}):
            for path in ("/v2/repository/models/swap/load", "/v2/repository/models/swap/unload"):
                denied = http.post(path, headers=headers)
                assert denied.status_code == 401 and denied.json()["code"] == "unauthorized", path
        assert http.get("/v2/repository/index").status_code == 401
        assert http.get("/v2/repository/index", headers=INFERENCE).status_code == 200
        bearer = {"Authorization": "Bearer admin-key"}
        assert http.post("/v2/repository/models/swap/load", headers=bearer).status_code == 200
        schema = http.get("/openapi.json", headers=INFERENCE).json()
        assert "401" in schema["paths"]["/v2/repository/models/{name}/load"]["post"]["responses"]


def test_load_errors_name_why_and_leave_the_served_version(
    keyed: tuple[Server, Path], two_versions: TwoVersions
) -> None:
    server, root = keyed
    with httpx.Client(base_url=server.url, timeout=30, headers=ADMIN) as http:
        missing = http.post("/v2/repository/models/absent/load")
        assert missing.status_code == 404 and missing.json()["code"] == "model_not_found"
        (root / "swap" / "5").mkdir()
        (root / "swap" / "5" / "model.json").write_text("{}")
        failed = http.post("/v2/repository/models/swap/load")
        assert failed.status_code == 400 and failed.json()["code"] == "load_failed"
        assert "swap/5: model.json is invalid" in failed.json()["error"]
        body = {"inputs": [[[0.1] * 5]]}
        answer = http.post("/v1/models/swap/predict", json=body, headers=INFERENCE)
        assert answer.status_code == 200 and answer.json()["version"] == 1
        assert http.get("/readyz").status_code == 200
        index = http.get("/v2/repository/index", headers=INFERENCE).json()
        assert index[-1]["version"] == "5" and index[-1]["state"] == "UNAVAILABLE"
        assert index[-1]["reason"].startswith("model.json is invalid")
        unknown = http.post("/v2/repository/models/swap/versions/7/unload")
        assert unknown.status_code == 404 and unknown.json()["code"] == "version_not_found"
        json_type = {**INFERENCE, "Content-Type": "application/json"}
        bad = http.post("/v2/repository/index", content=b"[1]", headers=json_type)
        assert bad.status_code == 422


def test_tritonclient_reads_the_index_loads_and_unloads(keyed: tuple[Server, Path]) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    server, root = keyed
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        index = client.get_model_repository_index(headers=INFERENCE)
        assert {"name": "swap", "version": "1", "state": "READY", "reason": ""} in index
        client.unload_model("swap", headers=ADMIN)
        index = client.get_model_repository_index(headers=INFERENCE)
        assert {m["state"] for m in index} == {"UNAVAILABLE"} and not client.is_model_ready("swap", headers=INFERENCE)
        (root / "swap" / "6").mkdir()
        with pytest.raises(InferenceServerException, match=r"swap/6: model\.json is missing"):
            client.load_model("swap", headers=ADMIN)  # loads 1 again; names the version that failed
        assert client.is_model_ready("swap", headers=INFERENCE)
    finally:
        client.close()
