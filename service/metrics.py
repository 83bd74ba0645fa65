"""Prometheus metrics, declared once; each app owns its registry so tests stay isolated.

With several HTTP worker processes (`service.workers`) prometheus_client runs in its multiprocess
mode (`PROMETHEUS_MULTIPROC_DIR`, set before the workers start): every process writes its values
to files there and `render` reads them all, so each process's `/metrics` shows the whole server.
Gauges say how processes combine: queue depths add up, readiness is the lowest.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024, 4096)
_PADDED_TOKENS_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536, 262144)
_EFFICIENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        labels = ["model", "version"]
        self.requests = Counter(
            "seqserve_requests", "Inference requests answered, by HTTP status.", [*labels, "status"], registry=r
        )
        self.grpc_requests = Counter(
            "seqserve_grpc_requests",
            "Inference requests over gRPC answered, by gRPC status code (OK, INVALID_ARGUMENT, ...).",
            [*labels, "code"],
            registry=r,
        )
        self.grpc_request_latency = Histogram(
            "seqserve_grpc_request_latency_seconds",
            "End-to-end time of an inference request over gRPC, message received to answer.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.request_latency = Histogram(
            "seqserve_request_latency_seconds",
            "End-to-end time of an inference request, body read to response.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "seqserve_queue_wait_seconds",
            "Time a sequence waited in the queue before its batch started.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "seqserve_compute_seconds",
            "Time the runtime took for one batch, padding included.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "seqserve_batch_size", "Sequences per batch.", labels, buckets=_BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_padded_tokens = Histogram(
            "seqserve_batch_padded_tokens",
            "Padded cells per batch (batch size x longest sequence).",
            labels,
            buckets=_PADDED_TOKENS_BUCKETS,
            registry=r,
        )
        self.padding_efficiency = Histogram(
            "seqserve_padding_efficiency",
            "Real steps / padded steps per batch (1.0: no padding).",
            labels,
            buckets=_EFFICIENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "seqserve_queue_depth", "Sequences waiting in the queue.", labels, registry=r, multiprocess_mode="livesum"
        )
        self.dropped = Counter(
            "seqserve_dropped_sequences",
            "Queued sequences dropped before compute: cancelled (client gone), timeout, failed (a sibling failed).",
            [*labels, "reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "seqserve_model_info",
            "1 for each loaded model version, with its device and runtime.",
            [*labels, "device", "runtime"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # NOTE: label children looked up once (a lookup takes a lock); statuses are a bounded set.
        self._answer_children: dict[tuple[str, str, int], tuple[Counter, Histogram | None]] = {}
        self.ready = Gauge("seqserve_ready", "1 while /readyz answers 200.", registry=r, multiprocess_mode="livemin")

        self.streams_live = Gauge(
            "seqserve_streams_live",
            "Live streams in the state store (with Redis: across all replicas), as last seen by this process.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.streams_started = Counter(
            "seqserve_streams_started",
            "Streams started (a start on a live stream restarts it: counted again).",
            ["model"],
            registry=r,
        )
        self.streams_ended = Counter(
            "seqserve_streams_ended", "Streams ended by their last chunk.", ["model"], registry=r
        )
        self.streams_expired = Counter(
            "seqserve_streams_expired", "Streams expired after stream_idle_seconds without a chunk.", registry=r
        )
        self.stream_chunks = Counter(
            "seqserve_stream_chunks",
            "Stream chunks: applied, replayed (a retry answered from the cache) or refused (409).",
            ["model", "outcome"],
            registry=r,
        )

    def answered(self, model: str, version: str, status: int, seconds: float | None) -> None:
        """Count an HTTP inference answer and observe its latency (None: no model was resolved)."""
        key = (model, version, status)
        children = self._answer_children.get(key)
        if children is None:
            latency = self.request_latency.labels(model, version) if model else None
            children = self._answer_children[key] = (self.requests.labels(model, version, str(status)), latency)
        children[0].inc()
        if seconds is not None and children[1] is not None:
            children[1].observe(seconds)

    def observer(self, model: str, version: int) -> BatchMetrics:
        return BatchMetrics(self, model, str(version))

    def render(self) -> bytes:
        if os.environ.get(MULTIPROCESS_DIR):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)


class BatchMetrics:
    """The batcher's observer for one model version (see `service.batching.BatchObserver`)."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._queue_depth = metrics.queue_depth.labels(model, version)
        self._queue_wait = metrics.queue_wait.labels(model, version)
        self._compute = metrics.compute.labels(model, version)
        self._batch_size = metrics.batch_size.labels(model, version)
        self._padded = metrics.batch_padded_tokens.labels(model, version)
        self._efficiency = metrics.padding_efficiency.labels(model, version)
        self._dropped = metrics.dropped
        self._labels = (model, version)

    def queue_depth(self, sequences: int) -> None:
        self._queue_depth.set(sequences)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def batch(self, size: int, padded_tokens: int, real_tokens: int, compute_seconds: float) -> None:
        self._batch_size.observe(size)
        self._padded.observe(padded_tokens)
        self._efficiency.observe(real_tokens / padded_tokens if padded_tokens else 1.0)
        self._compute.observe(compute_seconds)

    def dropped(self, reason: str, sequences: int) -> None:
        self._dropped.labels(*self._labels, reason).inc(sequences)
