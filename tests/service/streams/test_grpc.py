"""Streams over gRPC with tritonclient.grpc's sequence parameters: exact chunk by chunk, and refused alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.service.grpc.conftest import run_servers
from tests.service.streams.client import TOLERANCE, check_stream, random_chunking
from tests.service.streams.conftest import StreamRepository
from tests.service.streams.graphs import StreamEntry


def grpc_sender(client: triton.InferenceServerClient, entry: StreamEntry) -> Any:
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
