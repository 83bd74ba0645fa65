"""Every setting of `seqserve serve`, one typed and bounded field each.

Each field is read from a `--flag` (see `__main__`), then the matching
`SEQSERVE_*` environment variable, then its default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda"]
RuntimePreference = Literal["auto", "onnx", "torchscript"]
LogLevel = Literal["debug", "info", "warning", "error"]

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SEQSERVE_",
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=True,
    )

    repository: Path = Path("repository")
    """Model repository: `<repository>/<model>/<version>/model.json`."""

    host: str = "127.0.0.1"
    """Interface to listen on (`0.0.0.0` inside a container)."""

    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port to listen on (0 picks a free one)."""

    device: Device = "auto"
    """auto: the GPU when usable, else the CPU; cuda: ask for the GPU (falls back to the CPU with a warning); cpu."""

    runtime: RuntimePreference = "auto"
    """Preferred runtime when an entry has both files; auto prefers ONNX Runtime. The other file is used when the
    preferred one can't be."""

    default_model: str | None = None
    """Model answered by `POST /predict`; unset: the first model name in sorted order."""

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    """Most sequences in one batch."""

    max_batch_tokens: int = Field(default=8192, ge=1, le=1 << 24)
    """Most padded cells (batch size x longest sequence) in one batch; a single longer sequence still runs alone."""

    max_delay_ms: float = Field(default=2.0, ge=0.0, le=10_000.0)
    """Longest wait for a fuller batch while the model is busy; an idle model runs a request at once."""

    max_queue: int = Field(default=1024, ge=1, le=1 << 20)
    """Most sequences waiting per model version; past it requests get 503 with Retry-After at once."""

    max_queued_tokens: int = Field(default=262_144, ge=1, le=1 << 40)
    """Most time steps (characters for text models) waiting per model version, summed over queued
    sequences: bounds the padded work and memory a queue can hold; past it 503 with Retry-After at once. A single
    request with more steps than this gets 413."""

    max_body_bytes: int = Field(default=8 * MiB, ge=1024, le=1024 * MiB)
    """Largest request body accepted (413 past it), checked on Content-Length and on the streamed size."""

    max_sequences_per_request: int = Field(default=256, ge=1, le=65536)
    """Most sequences in one request (422 past it); never more than max_queue."""

    request_timeout_seconds: float = Field(default=30.0, gt=0.0, le=3600.0)
    """A request not answered within this time gets 504 timeout; its queued sequences are dropped."""

    api_key: SecretStr | None = None
    """When set, every endpoint but liveness and readiness needs `Authorization: Bearer <key>` or `X-API-Key: <key>`.
    Prefer the environment variable: a flag shows in `ps`."""

    grace_period_seconds: float = Field(default=20.0, ge=0.0, le=3600.0)
    """After SIGTERM: time allowed to finish queued and in-flight requests before the process exits."""

    batch_workers: int = Field(default=0, ge=0, le=256)
    """Batches computed at once per model version, each on a worker thread of its own. 0: one per CPU
    core for ONNX Runtime on the CPU (cores this process may run on, capped by a container's CPU quota;
    each batch single-threaded), one on a GPU and for TorchScript."""

    http_workers: Annotated[int, Field(ge=0, le=256)] | Literal["auto"] = "auto"
    """Server processes sharing the HTTP port (SO_REUSEPORT), each with its own event loop and its own batcher per
    model version, so HTTP work spreads over cores. The queue limits (max_queue, max_queued_tokens) hold for all of
    them together, each counting what the others have queued (max_connections stays per process); each loads its own
    copy of every model; the CPU cores are divided among them for the batch workers; each serves gRPC on its
    port too; metrics and readiness cover them all; SIGTERM drains them all; without state_url the first holds
    every stream and the others forward stream requests (HTTP and gRPC) to it. 0: one per CPU core. auto: one per
    CPU core, as many as half the available memory holds (about 150 MiB per process plus twice the repository's
    model files), and 1 with repository_api (a load or unload would reach one process only) or a visible NVIDIA GPU
    (one CUDA context, whole batches); the server logs what it chose and why."""

    onnx_threads: int = Field(default=0, ge=0, le=1024)
    """ONNX Runtime intra-op threads per batch; 0: the CPU cores divided among the batch workers (1 by default)."""

    compute_nice: int = Field(default=0, ge=0, le=19)
    """How far below the event loop the compute threads (batch workers, runtime thread pools) run, in
    Linux nice steps: HTTP and health checks stay prompt while batches keep every core busy, at some
    cost in throughput. 0: same priority."""

    torch_threads: int = Field(default=0, ge=0, le=1024)
    """torch intra-op threads for TorchScript models; 0: torch's default."""

    keep_alive_seconds: float = Field(default=5.0, gt=0.0, le=3600.0)
    """How long an idle HTTP keep-alive connection stays open. A load balancer or client reusing connections
    must drop idle ones sooner (deploy/nginx keeps them 4 s), or a request written just as the server closes
    one is lost."""

    head_timeout_seconds: float = Field(default=10.0, gt=0.0, le=3600.0)
    """Time a client has to send a request's head (request line and headers) from its first byte; past it 408 and
    the connection is closed. A head fits in one packet: any client sends it in well under a second. A connection
    that sends nothing at all is closed after keep_alive_seconds."""

    body_timeout_seconds: float = Field(default=30.0, gt=0.0, le=3600.0)
    """Time a client has to send a request's whole body from the end of its head; past it 408 and the connection is
    closed (the clock restarts if the server itself was holding off reading). 30 s takes a max_body_bytes body of
    8 MiB at 2.2 Mbit/s; a client that trickles bytes is cut off all the same."""

    max_connections: int = Field(default=2048, ge=1, le=1 << 20)
    """Most open client connections. Past it a new connection gets 503 with Retry-After at once and is closed;
    open ones keep being served. At start the open-file soft limit is raised to fit (up to the hard limit), with a
    warning when it can't be. 2048: far above what a load balancer pools, and within common file limits."""

    log_level: LogLevel = "info"
    """Log level of the server and uvicorn."""

    access_log: bool = False
    """Log one line per HTTP request (uvicorn's access log)."""

    repository_api: bool = False
    """Serve `POST /v2/repository/models/{name}/load` and `.../unload` (Triton's model repository extension). Off:
    those routes do not exist, as loading and unloading changes what every client is answered (the read-only
    `/v2/repository/index` is always served)."""

    admin_api_key: SecretStr | None = None
    """When set, the repository's load and unload routes need this key (`Authorization: Bearer <key>` or
    `X-API-Key: <key>`) and the inference key is refused there; unset, they need `api_key` when that is set."""

    repository_poll_seconds: float = Field(default=0.0, ge=0.0, le=3600.0)
    """Re-read the repository this often: a new version directory is loaded, warmed and then served; a removed one
    finishes its queued work and is released. 0: off."""

    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """Port of the Open Inference Protocol over gRPC (tritonclient.grpc, KServe); 0: off."""

    strict_readiness: bool = True
    """On: `/readyz` and `/v2/health/ready` answer 200 only when every model version in the repository is
    loaded and warmed, so a broken entry keeps the server out of a load balancer (and a rolling update waits).
    Off: 200 once loading has finished and at least one version is ready; the versions that failed to load get
    503 and stay named in `/v1/models`. Either way, not while loading or draining."""

    state_url: SecretStr | None = None
    """Where stream state lives between chunks: `redis://host:port/db` (or `rediss://`) keeps it in Redis, so
    any replica serves a stream's next chunk and a replica that dies loses no stream. Unset: in this process
    (one process only: a stream's chunks must reach the replica that holds it)."""

    max_streams: int = Field(default=10_000, ge=1, le=1 << 24)
    """Most live streams (in Redis: across all replicas); a chunk starting one more gets 429 with Retry-After."""

    stream_idle_seconds: float = Field(default=300.0, gt=0.0, le=7 * 86400.0)
    """A stream with no chunk for this long expires: its state is dropped, and a later chunk gets 404 saying so.
    An ended or expired stream is remembered as long again, so a retried last chunk is answered."""

    @field_validator("state_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("state_url must be a Redis URL: redis://host:port/db, rediss://... or unix://...")
        return value

    @model_validator(mode="after")
    def _one_process_for_the_repository_api(self) -> Settings:
        if self.repository_api and self.http_workers not in (1, "auto"):
            raise ValueError("repository_api needs http_workers=1: a load or unload would reach one process only")
        return self
