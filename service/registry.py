"""The models being served: load the repository, hold each version's runtime and batcher.

Loading runs in a background thread while HTTP already answers liveness;
readiness turns true once every entry is loaded and warmed, or, with
`strict_readiness` off, once loading has finished and at least one version is
ready (the versions that failed stay named among the reasons).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from service.batching import Batcher, BatchPolicy
from service.errors import ModelNotFound, ModelNotReady, VersionNotFound
from service.metrics import Metrics
from service.model_json import NAME_PATTERN, VERSION_PATTERN, ModelJson, RuntimeKind
from service.outputs import OutputFormatter
from service.repository import Entry, scan_repository
from service.runtime import (
    Runtime,
    RuntimeUnavailable,
    ThreadSettings,
    lower_thread_priority,
    open_runtime,
    zero_batch,
)
from service.settings import Settings
from service.validation import InputValidator

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed"]


@dataclass(eq=False)
class ModelVersion:
    """One <name>/<version> entry and, once loaded, everything that serves it."""

    name: str
    version: int
    spec: ModelJson | None
    state: State = "loading"
    error: str | None = None
    runtime: Runtime | None = None
    device_reason: str | None = None
    batcher: Batcher | None = field(default=None, repr=False)
    validator: InputValidator | None = field(default=None, repr=False)
    formatter: OutputFormatter | None = field(default=None, repr=False)

    def not_ready(self) -> ModelNotReady:
        """The error for a request this version can't serve now (loading, or failed to load)."""
        if self.state == "failed":
            return ModelNotReady(f"model {self.name}/{self.version} failed to load: {self.error}")
        return ModelNotReady(f"model {self.name}/{self.version} is still loading")


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._loading = True
        self._draining = False
        self._drain_deadline: float | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle (owned by the app's lifespan) ---------------------------

    def start(self) -> None:
        """Scan the repository now and load every entry in the background."""
        to_load: list[tuple[ModelVersion, Entry]] = []
        for entry in scan_repository(self._settings.repository):
            version = ModelVersion(entry.name, entry.version, entry.spec)
            self._models.setdefault(entry.name, {})[entry.version] = version
            if entry.ok:
                to_load.append((version, entry))
            else:
                self._fail(version, entry.error or "invalid entry")
        if not self._models:
            log.error("no model found in repository %s", self._settings.repository)
        default = self.default_model()
        if default is not None and default not in self._models:
            log.error("default model %r is not in the repository; POST /predict will answer 404", default)
        elif default is not None:
            log.info("default model for POST /predict: %s", default)
        self._task = asyncio.get_running_loop().create_task(self._load_all(to_load), name="load-repository")
        self._task.add_done_callback(self._load_ended)

    async def _load_all(self, to_load: list[tuple[ModelVersion, Entry]]) -> None:
        try:
            for version, entry in to_load:
                await self._load(version, entry)
        finally:
            self._loading = False
            self._update_ready_metric()
            log.info("repository loaded: %s", self.readiness()[1] or "all models ready")

    def _load_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("loading the repository failed", exc_info=task.exception())

    async def _load(self, version: ModelVersion, entry: Entry) -> None:
        assert entry.spec is not None
        spec = entry.spec
        try:
            # NOTE: opened on a thread of its own at the compute priority: runtime thread
            # pools started while opening and warming up inherit it.
            nice = self._settings.compute_nice
            opener = ThreadPoolExecutor(1, "seqserve-open", initializer=lower_thread_priority, initargs=(nice,))
            try:
                runtime, reason = await asyncio.get_running_loop().run_in_executor(opener, self._open_and_warm, entry)
            finally:
                opener.shutdown(wait=False)
        except Exception as exc:
            self._fail(version, str(exc))
            return
        policy = BatchPolicy(
            max_batch_size=min(self._settings.max_batch_size, runtime.fixed_batch or self._settings.max_batch_size),
            max_batch_tokens=self._settings.max_batch_tokens,
            max_delay_ms=self._settings.max_delay_ms,
            max_queue=self._settings.max_queue,
            max_queued_tokens=self._settings.max_queued_tokens,
            equal_length=spec.padding == "equal-length",
        )
        tokenizer = spec.input.tokenizer
        batcher = Batcher(
            runtime,
            policy,
            pad_value=tokenizer.padding_id if tokenizer is not None else 0.0,
            dtype=np.int64 if spec.input.kind == "text" else np.float32,
            uses_lengths=spec.uses_lengths,
            observer=self._metrics.observer(spec.name, spec.version),
            name=f"{spec.name}/{spec.version}",
            compute_nice=self._settings.compute_nice,
            workers=runtime.concurrency,
        )
        batcher.start()
        version.runtime, version.device_reason, version.batcher = runtime, reason, batcher
        # NOTE: a request larger than the queue could never be queued: refuse it as too large.
        max_sequences = min(self._settings.max_sequences_per_request, self._settings.max_queue)
        version.validator = InputValidator(spec, max_sequences=max_sequences, fixed_length=runtime.fixed_length)
        version.formatter = OutputFormatter(spec)
        version.state = "ready"
        self._metrics.model_info.labels(spec.name, str(spec.version), runtime.device, runtime.name).set(1)
        log.info(
            "loaded %s/%s: runtime %s on %s (%s); padding %s",
            spec.name,
            spec.version,
            runtime.name,
            runtime.device,
            reason,
            spec.padding,
        )

    def _open_and_warm(self, entry: Entry) -> tuple[Runtime, str]:
        """Blocking: open the entry with the preferred runtime that works, warm it up, check its outputs."""
        assert entry.spec is not None
        spec = entry.spec
        order: list[RuntimeKind] = (
            ["torchscript", "onnx"] if self._settings.runtime == "torchscript" else ["onnx", "torchscript"]
        )
        threads = ThreadSettings(
            self._settings.onnx_threads, self._settings.torch_threads, self._settings.batch_workers
        )
        problems: list[str] = []
        for kind in order:
            path = entry.files.get(kind)
            if path is None:
                continue

            def prepare(runtime: Runtime) -> None:
                runtime.warmup(self._warmup_shapes(spec, runtime))
                _check_outputs(spec, runtime)

            try:
                runtime, reason = open_runtime(kind, path, spec, self._settings.device, threads, prepare)
            except RuntimeUnavailable as exc:
                log.info("%s/%s: skipping %s (%s)", spec.name, spec.version, kind, exc)
                problems.append(f"{kind}: {exc}")
                continue
            except Exception as exc:
                log.warning("%s/%s: %s failed: %s", spec.name, spec.version, kind, exc, exc_info=True)
                problems.append(f"{kind}: {exc}")
                continue
            if kind != order[0] and self._settings.runtime != "auto":
                reason += f"; {order[0]} unavailable"
            return runtime, reason
        raise RuntimeError("; ".join(problems) or "no usable model file")

    def _warmup_shapes(self, spec: ModelJson, runtime: Runtime) -> list[tuple[int, int]]:
        """Typical (batch, time) shapes: short, medium and longest sequences, alone and batched."""
        max_length = runtime.fixed_length or spec.input.max_length
        lengths = sorted({max_length} if runtime.fixed_length else {1, min(16, max_length), max_length})
        shapes: list[tuple[int, int]] = []
        for time in lengths:
            full = max(1, min(self._settings.max_batch_size, self._settings.max_batch_tokens // time))
            for batch in sorted({1, full}):
                shapes.append((runtime.fixed_batch or batch, time))
        return list(dict.fromkeys(shapes))

    def _fail(self, version: ModelVersion, reason: str) -> None:
        version.state, version.error = "failed", reason
        log.error("model %s/%s failed to load: %s", version.name, version.version, reason)

    def begin_drain(self) -> None:
        """Readiness off and no new work, at once; queued work still runs, for at most the grace period."""
        if self._drain_deadline is None:
            self._drain_deadline = asyncio.get_running_loop().time() + self._settings.grace_period_seconds
        self._draining = True
        self._update_ready_metric()
        for version in self.versions():
            if version.batcher is not None:
                version.batcher.begin_drain()

    async def drain(self) -> bool:
        """Wait until every queued and in-flight request is answered, or the grace period
        (counted from the first `begin_drain`) is over; True if everything was answered."""
        self.begin_drain()
        assert self._drain_deadline is not None
        remaining = max(0.0, self._drain_deadline - asyncio.get_running_loop().time())
        waits = [v.batcher.drain() for v in self.versions() if v.batcher is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), remaining)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self.begin_drain()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(v.batcher.stop() for v in self.versions() if v.batcher is not None))

    # -- queries -------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    def versions(self) -> list[ModelVersion]:
        return [v for name in sorted(self._models) for _, v in sorted(self._models[name].items())]

    def names(self) -> list[str]:
        return sorted(self._models)

    def default_model(self) -> str | None:
        if self._settings.default_model is not None:
            return self._settings.default_model
        return min(self._models) if self._models else None

    def readiness(self) -> tuple[bool, list[str]]:
        """Whether the server should get traffic now, and the reasons: why not, or, when ready with
        `strict_readiness` off, which versions failed to load and are not served."""
        versions = self.versions()
        failed = [f"{v.name}/{v.version} failed: {v.error}" for v in versions if v.state == "failed"]
        blocking: list[str] = []
        if self._draining:
            blocking.append("draining")
        if self._loading:
            blocking.append("loading models")
        if not self._models:
            blocking.append("no models in the repository")
        if self._settings.strict_readiness:
            blocking += failed
        elif not self._loading and self._models and not any(v.state == "ready" for v in versions):
            blocking.append("no model version loaded")
        if not self._loading:
            blocking += [f"{v.name}/{v.version} not loaded" for v in versions if v.state == "loading"]
        if not self._draining:
            blocking += [
                f"{v.name}/{v.version}: batcher stopped"
                for v in versions
                if v.batcher is not None and not v.batcher.running
            ]
        if self._settings.strict_readiness:
            return not blocking, blocking
        return not blocking, blocking + failed

    def _update_ready_metric(self) -> None:
        self._metrics.ready.set(1 if self.readiness()[0] else 0)

    def model_versions(self, name: str) -> dict[int, ModelVersion]:
        versions = self._models.get(name) if NAME_PATTERN.match(name) else None
        if versions is None:
            raise ModelNotFound(f"model '{name}' not found")
        return versions

    def default_version(self, name: str) -> int | None:
        """The version answering requests that name none: the highest one ready."""
        ready = [number for number, v in self.model_versions(name).items() if v.state == "ready"]
        return max(ready) if ready else None

    def lookup(self, name: str, version: str | int | None = None) -> ModelVersion:
        """A version in any state: pinned, else the default one, else the highest."""
        versions = self.model_versions(name)
        if version is None:
            return versions[self.default_version(name) or max(versions)]
        if isinstance(version, str):
            if not VERSION_PATTERN.match(version):
                raise VersionNotFound(f"model '{name}' has no version '{version}'")
            version = int(version)
        found = versions.get(version)
        if found is None:
            raise VersionNotFound(f"model '{name}' has no version {version}")
        return found

    def resolve(self, name: str | None, version: str | int | None = None) -> ModelVersion:
        """The version that serves a request now: pinned, or the default one; it must be ready."""
        if name is None:
            name = self.default_model()
            if name is None:
                raise ModelNotFound("no default model: the repository is empty")
        found = self.lookup(name, version)
        if found.state != "ready":
            raise found.not_ready()
        return found


def _check_outputs(spec: ModelJson, runtime: Runtime) -> None:
    """The graph's output shape must match model.json's task, labels and output names."""
    time = runtime.fixed_length or min(3, spec.input.max_length)
    rows = runtime.fixed_batch or 2
    batch, lengths = zero_batch(spec, rows, time)
    out = np.asarray(runtime.predict(batch, lengths if spec.uses_lengths else None))
    where = f"graph output '{spec.graph.output}' has shape {list(out.shape)} for a batch of {rows} x {time}"
    if out.shape[0] != rows:
        raise ValueError(f"{where}: expected {rows} rows")
    if spec.task == "classification":
        assert spec.labels is not None
        if out.shape != (rows, len(spec.labels)):
            raise ValueError(f"{where}: expected [{rows}, {len(spec.labels)}] ({len(spec.labels)} labels)")
    elif spec.task == "tagging":
        assert spec.labels is not None
        if out.shape != (rows, time, len(spec.labels)):
            raise ValueError(f"{where}: expected [{rows}, {time}, {len(spec.labels)}]")
    else:
        outputs = 1 if out.ndim == 1 else int(np.prod(out.shape[1:]))
        if out.ndim > 2 or (spec.output_names is not None and outputs != len(spec.output_names)):
            raise ValueError(f"{where}: expected [{rows}, {len(spec.output_names or ())}]")
