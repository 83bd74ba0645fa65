"""Triton's model repository extension and `grpc.health.v1.Health` over gRPC, against the real
`python -m service` on 127.0.0.1: the index, load and unload through `tritonclient.grpc` unchanged, the
settings that guard them (`repository_api`, `admin_api_key`), health following readiness, and a version
swap by the repository RPCs under a closed gRPC loop with no failed request."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.service.api.conftest import sample_value, wait_until
from tests.service.api.test_repository_api import TOLERANCE, publish, repository_with_version_1
from tests.service.conftest import BuiltRepository, TwoVersions
from tests.service.grpc.conftest import Servers, run_servers

CONCURRENCY = 6
MAX_REQUESTS = 30_000  # bounds the load whatever happens
MAX_SECONDS = 90.0
PER_PHASE = 500  # answers of each phase before the next step
INFERENCE_KEY, ADMIN_KEY = "inference-key", "admin-key"
KEYS = {"SEQSERVE_API_KEY": INFERENCE_KEY, "SEQSERVE_ADMIN_API_KEY": ADMIN_KEY}
INFERENCE, ADMIN = {"x-api-key": INFERENCE_KEY}, {"x-api-key": ADMIN_KEY}


def health(servers: Servers, service: str = "") -> int:
    with grpc.insecure_channel(servers.grpc_url) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(answer.status)


@pytest.fixture
def keyed(two_versions: TwoVersions, tmp_path: Path) -> Iterator[tuple[Servers, Path]]:
    root = repository_with_version_1(two_versions, tmp_path)
    with run_servers(root, "--repository-api", log_dir=tmp_path, env=KEYS) as servers:
        yield servers, root


def test_tritonclient_reads_the_index_loads_and_unloads(keyed: tuple[Servers, Path], two_versions: TwoVersions) -> None:
    servers, root = keyed
    client = servers.client()
    try:
        assert health(servers) == health_pb2.HealthCheckResponse.SERVING  # a probe needs no key, as /readyz
        index = client.get_model_repository_index(headers=INFERENCE, as_json=True)
        assert index == {"models": [{"name": "swap", "version": "1", "state": "READY"}]}  # empty reason: omitted
        publish(two_versions, root, 2)
        listed = client.get_model_repository_index(headers=INFERENCE).models
        assert [(m.version, m.state, m.reason) for m in listed] == [
            ("1", "READY", ""),
            ("2", "UNAVAILABLE", "not loaded"),
        ]
        client.load_model("swap", headers=ADMIN)
        assert client.is_model_ready("swap", "2", headers=INFERENCE)
        assert client.get_model_metadata("swap", headers=INFERENCE).versions == ["1", "2"]
        # seqserve's "version" parameter: one version only (tritonclient can't send it; the stub can).
        with grpc.insecure_channel(servers.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.RepositoryModelUnloadRequest(model_name="swap")
            request.parameters["version"].string_param = "1"
            stub.RepositoryModelUnload(request, metadata=tuple(ADMIN.items()), timeout=60)
        ready = client.get_model_repository_index(headers=INFERENCE, as_json=True)
        assert ready["models"] == [
            {"name": "swap", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
            {"name": "swap", "version": "2", "state": "READY"},
        ]
        only_ready = client._client_stub.RepositoryIndex(
            service_pb2.RepositoryIndexRequest(ready=True), metadata=tuple(INFERENCE.items()), timeout=10
        )
        assert [(m.version, m.state) for m in only_ready.models] == [("2", "READY")]
        client.unload_model("swap", headers=ADMIN)
        with pytest.raises(triton.InferenceServerException) as unloaded:
            client.is_model_ready("swap", headers=INFERENCE)  # as HTTP's 404: nothing of it is served
        assert unloaded.value.status() == "StatusCode.NOT_FOUND" and "unloaded" in unloaded.value.message()
        client.load_model("swap", headers=ADMIN)  # serves every version on disk again
        assert client.is_model_ready("swap", "1", headers=INFERENCE)
    finally:
        client.close()


def test_the_admin_key_guards_load_and_unload_and_errors_are_status_codes(keyed: tuple[Servers, Path]) -> None:
    servers, _ = keyed
    client = servers.client()
    try:
        for headers in (None, INFERENCE):  # the inference key is refused where the admin key is set
            with pytest.raises(triton.InferenceServerException) as refused:
                client.load_model("swap", headers=headers)
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
            with pytest.raises(triton.InferenceServerException) as refused:
                client.unload_model("swap", headers=headers)
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(triton.InferenceServerException) as refused:
            client.get_model_repository_index()  # the index is behind the API key
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(triton.InferenceServerException) as missing:
            client.load_model("nothing", headers=ADMIN)
        assert missing.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(triton.InferenceServerException) as override:
            client.load_model("swap", headers=ADMIN, config='{"max_batch_size": 4}')
        assert override.value.status() == "StatusCode.INVALID_ARGUMENT" and "config" in override.value.message()
        client.unload_model("swap", headers=ADMIN, unload_dependents=True)  # accepted: nothing depends on it
        with pytest.raises(grpc.RpcError) as absent:
            client._client_stub.RepositoryModelLoad(
                service_pb2.RepositoryModelLoadRequest(
                    model_name="swap", parameters={"version": service_pb2.ModelRepositoryParameter(int64_param=9)}
                ),
                metadata=tuple(ADMIN.items()),
                timeout=60,
            )
        assert absent.value.code() == grpc.StatusCode.NOT_FOUND and "version 9" in str(absent.value.details())
    finally:
        client.close()


def test_load_and_unload_are_unimplemented_without_the_repository_api(servers: Servers) -> None:
    client = servers.client()
    try:
        assert [m.name for m in client.get_model_repository_index().models]  # the index is always served
        for call in (client.load_model, client.unload_model):
            with pytest.raises(triton.InferenceServerException) as refused:
                call("feat")
            assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
    finally:
        client.close()


def test_health_follows_readiness_and_the_drain(test_repository: BuiltRepository, tmp_path: Path) -> None:
    root = tmp_path / "repository"
    shutil.copytree(test_repository.path / "feat", root / "feat")
    flags = ("--grace-period-seconds", "60", "--max-batch-size", "1", "--batch-workers", "1", "--max-queue", "8192")
    with run_servers(root, *flags, log_dir=tmp_path) as servers:
        assert health(servers) == health_pb2.HealthCheckResponse.SERVING
        assert health(servers, "inference.GRPCInferenceService") == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health(servers, "other.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        # Keep the queue busy so that the drain lasts: SERVING turns NOT_SERVING at SIGTERM.
        rng = np.random.default_rng(3)
        with grpc.insecure_channel(servers.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            calls = []
            for _ in range(24):
                batch = rng.normal(size=(8, 40, 5)).astype("<f4")
                request = service_pb2.ModelInferRequest(model_name="feat")
                request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
                request.raw_input_contents.append(batch.tobytes())
                calls.append(stub.ModelInfer.future(request, timeout=120))

            def submitted() -> float:
                metrics = servers.http.metrics()
                computed = sample_value(metrics, "seqserve_batch_size_sum", {"model": "feat"})
                return sample_value(metrics, "seqserve_queue_depth", {"model": "feat"}) + computed

            wait_until(lambda: submitted() >= len(calls) * 8 - 1)  # every request queued or running
            servers.http.process.send_signal(signal.SIGTERM)
            # The signal is handled on the server's loop: poll until health leaves SERVING (the drain of the
            # queue on one worker lasts far longer than a few probes).
            statuses = [health(servers)]
            wait_until(
                lambda: statuses.append(health(servers)) or statuses[-1] != health_pb2.HealthCheckResponse.SERVING
            )
            assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, statuses
            assert all(call.result().raw_output_contents for call in calls)
        assert servers.http.process.wait(timeout=60) == 0


@dataclass
class Tally:
    sent: int = 0
    by_version: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


async def swap_over_grpc(servers: Servers, two_versions: TwoVersions, root: Path) -> Tally:
    """CONCURRENCY tasks each send their next ModelInfer once the last is answered, while version 2 is
    published and loaded and version 1 unloaded by the repository RPCs."""
    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=(int(n), two_versions.features)).round(4) for n in rng.integers(1, 21, 16)]
    expected = {str(v): [two_versions.expected[v](seq.tolist()) for seq in inputs] for v in (1, 2)}
    requests = []
    for seq in inputs:
        request = service_pb2.ModelInferRequest(model_name="swap")
        request.inputs.add(name="input", datatype="FP32", shape=[1, *seq.shape])
        request.outputs.add(name="probabilities")
        request.raw_input_contents.append(seq.astype("<f4").tobytes())
        requests.append(request)
    tally, done = Tally(), asyncio.Event()
    async with aio.insecure_channel(servers.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def client(k: int) -> None:
            while not done.is_set() and tally.sent < MAX_REQUESTS:
                i = (k + tally.sent) % len(inputs)
                tally.sent += 1
                try:
                    answer = await stub.ModelInfer(requests[i], metadata=tuple(INFERENCE.items()), timeout=60)
                except grpc.RpcError as exc:
                    tally.failures.append(f"{exc.code()}: {exc.details()}")
                    continue
                got = np.frombuffer(answer.raw_output_contents[0], dtype="<f4")
                version = answer.model_version
                if version not in expected or np.abs(got - expected[version][i]).max() > TOLERANCE:
                    tally.failures.append(f"version {version}: wrong answer for input {i}")
                tally.by_version[version] += 1

        async def until(count: int, version: str) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while tally.by_version[version] < count:
                assert loop.time() < deadline, f"{count} answers of version {version} not within 60 s"
                await asyncio.sleep(0.05)

        async def swap() -> None:
            await until(PER_PHASE, "1")
            publish(two_versions, root, 2)
            load = asyncio.ensure_future(
                stub.RepositoryModelLoad(
                    service_pb2.RepositoryModelLoadRequest(model_name="swap"), metadata=tuple(ADMIN.items()), timeout=60
                )
            )
            await asyncio.sleep(0.05)
            unload = service_pb2.RepositoryModelUnloadRequest(model_name="swap")
            unload.parameters["version"].string_param = "1"
            await stub.RepositoryModelUnload(unload, metadata=tuple(ADMIN.items()), timeout=60)
            await load
            await until(tally.by_version["2"] + PER_PHASE, "2")

        clients = [asyncio.create_task(client(k)) for k in range(CONCURRENCY)]
        try:
            await asyncio.wait_for(swap(), MAX_SECONDS)
        finally:
            done.set()
            await asyncio.gather(*clients)
    return tally


def test_swap_by_the_repository_rpcs_fails_no_request(two_versions: TwoVersions, tmp_path: Path) -> None:
    root = repository_with_version_1(two_versions, tmp_path)
    with run_servers(root, "--repository-api", "--max-delay-ms", "2", log_dir=tmp_path, env=KEYS) as servers:
        tally = asyncio.run(swap_over_grpc(servers, two_versions, root))
        print(
            f"\nswap over gRPC: {tally.sent} requests, {len(tally.failures)} failed, answers by version "
            f"{dict(sorted(tally.by_version.items()))}"
        )
        assert tally.failures == [] and tally.by_version["1"] >= PER_PHASE and tally.by_version["2"] >= PER_PHASE
        assert health(servers) == health_pb2.HealthCheckResponse.SERVING
    assert "unloaded swap/1" in servers.http.log()
