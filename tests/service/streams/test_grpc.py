"""Streams over gRPC with tritonclient.grpc's sequence parameters: exact chunk by chunk, and refused alike."""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.service.api.conftest import sample_value
from tests.service.grpc.conftest import run_servers
from tests.service.streams.client import TOLERANCE, check_stream, random_chunking, random_sequence
from tests.service.streams.conftest import StreamRepository
from tests.service.streams.graphs import StreamEntry


def grpc_sender(client: triton.InferenceServerClient, entry: StreamEntry, headers: dict[str, str] | None = None) -> Any:
    def send(stream: str, steps: Any, start: bool, end: bool, offset: int) -> np.ndarray:
        array = np.asarray([steps], dtype=np.float32)
        tensor = triton.InferInput("input", list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        result = client.infer(
            entry.name,
            [tensor],
            sequence_id=stream,
            sequence_start=start,
            sequence_end=end,
            parameters={"sequence_offset": offset},
            headers=headers,
        )
        parameters = result.get_response().parameters
        assert parameters["sequence_position"].int64_param == offset + len(steps)
        output = result.as_numpy("values" if entry.task == "regression" else "probabilities")
        assert output is not None
        return output[0]

    return send


def test_grpc_streams(stream_repository: StreamRepository, tmp_path: Path) -> None:
    rng = np.random.default_rng(21)
    with run_servers(stream_repository.path, log_dir=tmp_path) as servers:
        client = servers.client()
        try:
            for name, stream in (("gru-mean", 31), ("gru-tagger", "tags-1")):
                entry = stream_repository.entries[name]
                sequence = rng.normal(size=(25, 3)).round(4).tolist()
                sizes = random_chunking(25, rng, largest=7)
                assert check_stream(entry, grpc_sender(client, entry), stream, sequence, sizes) <= TOLERANCE
            tensor = triton.InferInput("input", [1, 2, 3], "FP32")
            tensor.set_data_from_numpy(np.zeros((1, 2, 3), dtype=np.float32))
            with pytest.raises(InferenceServerException, match="never started") as unknown:
                client.infer("lstm-last", [tensor], sequence_id=123456)
            assert "NOT_FOUND" in str(unknown.value.status())
            client.infer("lstm-last", [tensor], sequence_id=8, sequence_start=True)
            with pytest.raises(InferenceServerException, match="expects a chunk starting at step 2"):
                client.infer("lstm-last", [tensor], sequence_id=8, parameters={"sequence_offset": 5})
            bidi = triton.InferInput("input", [1, 2, 5], "FP32")
            bidi.set_data_from_numpy(np.zeros((1, 2, 5), dtype=np.float32))
            with pytest.raises(InferenceServerException, match="bidirectional"):
                client.infer("bidi", [bidi], sequence_id=9, sequence_start=True)
        finally:
            client.close()


def connections_by_process(parent: int, port: int) -> collections.Counter[int]:
    """How many established TCP connections on local `port` each child process of `parent` holds (/proc)."""
    inodes = set()
    for table in ("tcp", "tcp6"):  # gRPC listens on an IPv6 socket that takes IPv4 too
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # ESTABLISHED
                inodes.add(f"socket:[{fields[9]}]")
    counts: collections.Counter[int] = collections.Counter()
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        for fd in os.listdir(f"/proc/{child}/fd"):
            try:
                if os.readlink(f"/proc/{child}/fd/{fd}") in inodes:
                    counts[int(child)] += 1
            except OSError:
                continue  # closed meanwhile
    return counts


def test_grpc_on_every_http_process_without_redis(stream_repository: StreamRepository, tmp_path: Path) -> None:
    """Two HTTP processes, no Redis: both serve gRPC on its one port; the first holds every stream, the other
    passes its stream chunks to it. Each call on a new connection (the kernel spreads them over both): each
    chunk's answer equals the user's module, each is applied and counted once, and the first process's
    refusals (a wrong key, a stream never started) reach the client from either, with their codes."""
    entry = stream_repository.entries["gru-tagger"]
    rng = np.random.default_rng(77)
    key = {"x-api-key": "k-77"}
    with run_servers(
        stream_repository.path,
        "--http-workers",
        "2",
        "--max-delay-ms",
        "2",
        log_dir=tmp_path,
        env={"SEQSERVE_API_KEY": "k-77"},
    ) as servers:
        port = int(servers.grpc_url.rsplit(":", 1)[1])
        # NOTE: clients in one process share a connection unless told not to, as separate clients would not
        own = [("grpc.use_local_subchannel_pool", 1)]
        clients = [triton.InferenceServerClient(servers.grpc_url, channel_args=own) for _ in range(16)]
        try:
            for client in clients:  # plain inference on 16 connections at once: both processes hold some
                assert client.is_server_ready(headers=key)
            by_process = connections_by_process(servers.http.process.pid, port)
            assert len(by_process) == 2 and sum(by_process.values()) == 16, by_process
        finally:
            for client in clients:
                client.close()

        def fresh(stream: str, steps: Any, start: bool, end: bool, offset: int) -> np.ndarray:
            client = triton.InferenceServerClient(servers.grpc_url, channel_args=own)
            try:
                send = grpc_sender(client, entry, headers=key)
                return send(stream, steps, start, end, offset)  # type: ignore[no-any-return]
            finally:
                client.close()

        sent = 0
        for stream in ("spread-1", 4242):
            sequence = random_sequence(entry, 30, rng)
            sizes = [1] * 6 + random_chunking(24, rng, largest=6)
            assert check_stream(entry, fresh, stream, sequence, sizes) <= TOLERANCE  # type: ignore[arg-type]
            sent += len(sizes)
        metrics = servers.http.metrics(headers=key)
        assert sample_value(metrics, "seqserve_stream_chunks_total", {"outcome": "applied"}) == sent
        assert sample_value(metrics, "seqserve_grpc_requests_total", {"code": "OK"}) == sent
        tensor = triton.InferInput("input", [1, 2, 3], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 2, 3), dtype=np.float32))
        for _ in range(6):
            client = triton.InferenceServerClient(servers.grpc_url, channel_args=own)
            try:
                with pytest.raises(InferenceServerException, match="never started") as unknown:
                    client.infer(entry.name, [tensor], sequence_id="nobody", headers=key)
                assert "NOT_FOUND" in str(unknown.value.status())
                with pytest.raises(InferenceServerException, match="API key") as refused:
                    client.infer(entry.name, [tensor], sequence_id="spread-1")
                assert "UNAUTHENTICATED" in str(refused.value.status())
            finally:
                client.close()
        metrics = servers.http.metrics(headers=key)
        assert sample_value(metrics, "seqserve_grpc_requests_total", {"code": "NOT_FOUND"}) == 6
        assert sample_value(metrics, "seqserve_grpc_requests_total", {"code": "UNAUTHENTICATED"}) == 6
