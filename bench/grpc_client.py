"""The gRPC load generator: a closed loop of ModelInfer calls over `grpc.aio`, requests encoded once.

Each request is a serialized `ModelInferRequest` (raw input contents, as tritonclient sends them) and each
answer is kept as bytes, never parsed: per call the client only hands bytes to gRPC, so its CPU stays
small and is reported (`LoadResult.client_cpu_share`), as with the HTTP client. `concurrency` calls are
in flight at once, spread over a few channels (one HTTP/2 connection each).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import numpy as np
from grpc import aio

from bench.client import LoadResult, Send, Window, run_closed_loop

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
CALLS_PER_CHANNEL = 16
"""Concurrent calls per channel (HTTP/2 connection): a handful of connections, as a client pool keeps."""


def encode_infer_requests(model: str, sequences: Sequence[np.ndarray]) -> list[bytes]:
    """One serialized ModelInferRequest per sequence: input `input` FP32 [1, steps, features], raw contents."""
    from service.grpc.proto import grpc_predict_v2_pb2 as pb

    out = []
    for seq in sequences:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="input", datatype="FP32", shape=[1, *seq.shape])
        request.raw_input_contents.append(np.ascontiguousarray(seq, dtype="<f4").tobytes())
        out.append(request.SerializeToString())
    return out


async def grpc_closed_loop(
    port: int,
    requests: Sequence[bytes],
    concurrency: int,
    seconds: float,
    warmup_seconds: float,
    on_window: tuple[Window, Window] | None = None,
    connections: int = 0,
) -> LoadResult:
    """`concurrency` calls in a closed loop; only answers inside the window after warm-up count. `connections`:
    HTTP/2 connections to spread them over (0: one per `CALLS_PER_CHANNEL` calls)."""
    # NOTE: a local subchannel pool per channel, else channels to one address share one connection.
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    channels = [
        aio.insecure_channel(f"127.0.0.1:{port}", options=options)
        for _ in range(connections or max(1, -(-concurrency // CALLS_PER_CHANNEL)))
    ]
    calls = [channel.unary_unary(MODEL_INFER) for channel in channels]  # bytes in, bytes out
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 30)

    def sender(k: int) -> Send:
        call = calls[k % len(calls)]

        async def send(raw: bytes) -> bool:
            try:
                await call(raw, timeout=60)
            except grpc.RpcError:
                return False
            return True

        return send

    try:
        return await run_closed_loop(
            [sender(k) for k in range(concurrency)], requests, seconds, warmup_seconds, on_window
        )
    finally:
        for channel in channels:
            await channel.close()
