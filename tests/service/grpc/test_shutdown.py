"""SIGTERM with gRPC requests queued: new ones get UNAVAILABLE, every accepted one is answered, exit status 0."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.service.api.conftest import sample_value, wait_until
from tests.service.conftest import BuiltRepository
from tests.service.grpc.conftest import run_servers

REQUESTS = 16
SEQUENCES = 8
STEPS = 40


def feat_request(batch: np.ndarray) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="feat")
    request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
    request.raw_input_contents.append(batch.astype("<f4").tobytes())
    return request


def test_sigterm_answers_every_accepted_rpc_and_refuses_new_ones(
    test_repository: BuiltRepository, tmp_path: Path
) -> None:
    root = tmp_path / "repository"
    shutil.copytree(test_repository.path / "feat", root / "feat")
    rng = np.random.default_rng(5)
    batches = [rng.normal(size=(SEQUENCES, STEPS, 5)).astype(np.float32) for _ in range(REQUESTS)]
    flags = ("--max-batch-size", "1", "--batch-workers", "1", "--grace-period-seconds", "60", "--max-queue", "8192")
    with run_servers(root, *flags, log_dir=tmp_path) as servers, grpc.insecure_channel(servers.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        calls = [stub.ModelInfer.future(feat_request(batch), timeout=120) for batch in batches]

        def submitted() -> float:
            metrics = servers.http.metrics()
            computed = sample_value(metrics, "seqserve_batch_size_sum", {"model": "feat"})
            return sample_value(metrics, "seqserve_queue_depth", {"model": "feat"}) + computed

        wait_until(lambda: submitted() >= REQUESTS * SEQUENCES - 1)  # every request queued or running
        servers.http.process.send_signal(signal.SIGTERM)
        try:
            stub.ModelInfer(feat_request(batches[0]), timeout=30)
            raise AssertionError("a request after SIGTERM was accepted")
        except grpc.RpcError as refused:
            # "draining" while the queue drains; once the server has closed, the connection is refused: both UNAVAILABLE
            assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
        for batch, call in zip(batches, calls, strict=True):
            answer = call.result()
            probabilities = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(SEQUENCES, -1)
            assert probabilities.shape == (SEQUENCES, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
            assert len(batch) == SEQUENCES
        assert servers.http.process.wait(timeout=60) == 0, servers.http.log()
    assert "drained: every queued request answered" in servers.http.log()
