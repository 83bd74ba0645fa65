"""The models being served: load the repository, hold each version's runtime and batcher.

Loading runs in a background thread while HTTP already answers liveness;
readiness turns true once every entry is loaded and warmed, or, with
`strict_readiness` off, once loading has finished and at least one version is
ready (the versions that failed stay named among the reasons).

Later, versions are loaded and unloaded while serving (`load_model`, `unload_version`,
`poll`: the model repository extension): a new version takes requests only once warm, and
a version being unloaded takes none while it finishes those it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from service.batching import Batcher, BatchPolicy
from service.checks import graph_problems
from service.errors import Draining, LoadFailed, ModelNotFound, ModelNotReady, ServiceError, VersionNotFound
from service.metrics import Metrics
from service.model_json import NAME_PATTERN, VERSION_PATTERN, ModelJson, RuntimeKind
from service.outputs import OutputFormatter
from service.queue_totals import QueueCounter, QueueTable, queue_key
from service.repository import Entry, read_entry, scan_model, scan_repository, signature, version_dirs
from service.runtime import (
    Runtime,
    RuntimeUnavailable,
    StreamRuntime,
    ThreadSettings,
    input_dtype,
    lower_thread_priority,
    open_runtime,
    open_stream,
    zero_batch,
)
from service.settings import Settings
from service.streams.service import StreamService
from service.validation import InputValidator

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed", "unloading", "unloaded"]
"""unloading: finishing the requests it has, taking no new ones; unloaded: released, its directory still there."""

T = TypeVar("T")


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
    stream_batcher: Batcher | None = field(default=None, repr=False)
    """Chunks of streams, through the stream graph (model.json `streaming`); None when it has none."""
    validator: InputValidator | None = field(default=None, repr=False)
    formatter: OutputFormatter | None = field(default=None, repr=False)
    from_start_up: bool = True
    """Loaded at start-up: failing then keeps readiness off. A later load's failure is answered to its caller,
    shown in the index and logged, while the versions already served go on serving."""
    signature: tuple[tuple[str, int, int], ...] = ()
    """Its directory's files when last read: the poll retries a failed version once they change."""

    def batchers(self) -> list[Batcher]:
        """Its batchers: whole sequences, and stream chunks when it streams."""
        return [b for b in (self.batcher, self.stream_batcher) if b is not None]

    def not_ready(self) -> ServiceError:
        """The error for a request this version can't serve now: loading or failed (503, retry later), or
        being unloaded or unloaded (404: it is not coming back by itself)."""
        if self.state == "failed":
            return ModelNotReady(f"model {self.name}/{self.version} failed to load: {self.error}")
        if self.state in ("unloading", "unloaded"):
            verb = "is being unloaded" if self.state == "unloading" else "is unloaded"
            return VersionNotFound(f"model {self.name} version {self.version} {verb}")
        return ModelNotReady(f"model {self.name}/{self.version} is still loading")


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index: a version the registry holds, or one only on disk (state None)."""

    name: str
    version: int
    state: State | None
    reason: str


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._loading = True
        self._draining = False
        self._drain_deadline: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._changing = asyncio.Lock()  # one load, unload or poll at a time, the start-up load included
        self._operations: set[asyncio.Task[Any]] = set()  # loads and unloads under way, shielded from callers
        self._poll_task: asyncio.Task[None] | None = None
        self.peers: Callable[[], list[str]] | None = None
        """With several HTTP worker processes (`service.workers`): why the other processes are not ready (an empty
        list when they all are); readiness is true only when every process is."""
        self.streams: StreamService | None = None
        """The streams of these models and where their state lives; set by the app that serves them (both
        edges, HTTP and gRPC, reach it here)."""
        self.queues: QueueTable | None = None
        """With several HTTP worker processes: the table where every process's queues are counted, so that the
        queue limits hold for the whole server (`service.queue_totals`)."""

    # -- lifecycle (owned by the app's lifespan) ---------------------------

    def start(self) -> None:
        """Scan the repository now and load every entry in the background."""
        to_load: list[tuple[ModelVersion, Entry]] = []
        for entry in scan_repository(self._settings.repository):
            version = ModelVersion(entry.name, entry.version, entry.spec, signature=signature(entry.path))
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
        if self._settings.repository_poll_seconds > 0:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_forever(), name="poll-repository")
            self._poll_task.add_done_callback(self._load_ended)

    async def _load_all(self, to_load: list[tuple[ModelVersion, Entry]]) -> None:
        try:
            async with self._changing:
                for version, entry in to_load:
                    await self._load(version, entry)
        finally:
            self._loading = False
            self._update_ready_metric()
            log.info("repository loaded: %s", self.readiness()[1] or "all models ready")

    def _load_ended(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def _load(self, version: ModelVersion, entry: Entry) -> None:
        assert entry.spec is not None
        spec = entry.spec
        try:
            # NOTE: opened on a thread of its own at the compute priority: runtime thread
            # pools started while opening and warming up inherit it.
            nice = self._settings.compute_nice
            opener = ThreadPoolExecutor(1, "seqserve-open", initializer=lower_thread_priority, initargs=(nice,))
            try:
                loop = asyncio.get_running_loop()
                runtime, reason = await loop.run_in_executor(opener, self._open_and_warm, entry)
                stream = None
                if spec.streaming is not None:
                    stream = await loop.run_in_executor(opener, self._open_stream, entry, runtime.name)
            finally:
                opener.shutdown(wait=False)
        except Exception as exc:
            self._fail(version, str(exc))
            return
        if self._draining:  # NOTE: a batcher started now would outlive `stop()`
            self._fail(version, "the server is shutting down")
            return
        counter, max_queue, max_queued_tokens = self._queue_limits(queue_key(spec.name, spec.version))
        policy = BatchPolicy(
            max_batch_size=min(self._settings.max_batch_size, runtime.fixed_batch or self._settings.max_batch_size),
            max_batch_tokens=self._settings.max_batch_tokens,
            max_delay_ms=self._settings.max_delay_ms,
            max_queue=max_queue,
            max_queued_tokens=max_queued_tokens,
            equal_length=spec.padding == "equal-length",
        )
        batcher = Batcher(
            runtime,
            policy,
            pad_value=spec.input.pad_value,
            dtype=input_dtype(spec),
            uses_lengths=spec.uses_lengths,
            observer=self._metrics.observer(spec.name, spec.version),
            name=f"{spec.name}/{spec.version}",
            compute_nice=self._settings.compute_nice,
            workers=runtime.concurrency,
            counter=counter,
        )
        batcher.start()
        if stream is not None:
            stream_counter, stream_queue, stream_tokens = self._queue_limits(
                queue_key(spec.name, spec.version, streams=True)
            )
            version.stream_batcher = Batcher(
                stream,
                dataclasses.replace(policy, max_queue=stream_queue, max_queued_tokens=stream_tokens),
                pad_value=spec.input.pad_value,
                dtype=input_dtype(spec),
                uses_lengths=True,
                observer=self._metrics.observer(spec.name, spec.version),
                name=f"{spec.name}/{spec.version}/streams",
                compute_nice=self._settings.compute_nice,
                workers=stream.concurrency,
                stream=True,
                counter=stream_counter,
            )
            version.stream_batcher.start()
        version.runtime, version.device_reason, version.batcher = runtime, reason, batcher
        # NOTE: a request larger than the queue could never be queued: refuse it as too large.
        max_sequences = min(self._settings.max_sequences_per_request, max_queue)
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

    def _queue_limits(self, key: str) -> tuple[QueueCounter | None, int, int]:
        """A queue's row in the table the HTTP processes share, and the limits it is held to: the configured
        ones for their sum; for a queue the others cannot see (a version found by a later poll), its process's
        share of them."""
        table = self.queues
        counter = table.counter(key) if table is not None else None
        share = table.processes if table is not None and counter is None else 1
        settings = self._settings
        return counter, max(1, settings.max_queue // share), max(1, settings.max_queued_tokens // share)

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
                problems = graph_problems(spec, runtime)
                if problems:
                    raise ValueError("; ".join(problems))

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

    def _open_stream(self, entry: Entry, preferred: RuntimeKind) -> StreamRuntime:
        """Blocking: open the entry's stream graph, with the runtime of its whole graph when it has that file,
        warm it up and check its outputs."""
        assert entry.spec is not None and entry.spec.streaming is not None
        spec, formats = entry.spec, entry.spec.streaming.formats
        named: tuple[tuple[RuntimeKind, str | None], ...] = (
            ("onnx", formats.onnx),
            ("torchscript", formats.torchscript),
        )
        files = {kind: name for kind, name in named if name}
        order: list[RuntimeKind] = [preferred] + [kind for kind in files if kind != preferred]
        threads = ThreadSettings(
            self._settings.onnx_threads, self._settings.torch_threads, self._settings.batch_workers
        )
        problems: list[str] = []
        for kind in order:
            if kind not in files:
                continue

            def prepare(runtime: StreamRuntime) -> None:
                runtime.warmup(self._warmup_shapes(spec, runtime))
                _check_stream_outputs(spec, runtime)

            try:
                stream, _ = open_runtime(
                    kind, entry.path / files[kind], spec, self._settings.device, threads, prepare, opener=open_stream
                )
            except Exception as exc:
                log.warning("%s/%s: stream graph %s failed: %s", spec.name, spec.version, kind, exc)
                problems.append(f"stream graph {kind}: {exc}")
                continue
            return stream
        raise RuntimeError("; ".join(problems) or "no usable stream graph file")

    def _warmup_shapes(self, spec: ModelJson, runtime: Runtime | StreamRuntime) -> list[tuple[int, int]]:
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
            for batcher in version.batchers():
                batcher.begin_drain()

    async def drain(self) -> bool:
        """Wait until every queued and in-flight request is answered, or the grace period
        (counted from the first `begin_drain`) is over; True if everything was answered."""
        self.begin_drain()
        assert self._drain_deadline is not None
        remaining = max(0.0, self._drain_deadline - asyncio.get_running_loop().time())
        waits = [batcher.drain() for v in self.versions() for batcher in v.batchers()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), remaining)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self.begin_drain()
        for task in [self._task, self._poll_task, *self._operations]:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):  # logged, or answered to its caller
                    await task
        await asyncio.gather(*(batcher.stop() for v in self.versions() for batcher in v.batchers()))

    # -- the repository while serving (load, unload, poll) -------------------

    async def load_model(self, name: str) -> None:
        """Re-read `<repository>/<name>/` and serve what it holds: each version not served (new, unloaded or
        failed) is loaded and warmed, and only then takes requests (the highest ready one by default); versions
        already served are kept as they are; versions whose directory is gone are unloaded. Raises
        `ModelNotFound` without the directory, and `LoadFailed` naming each version that failed and why."""
        if not NAME_PATTERN.match(name):
            raise ModelNotFound(f"model '{name}' not found")
        await self._operation(self._load_model(name))

    async def _load_model(self, name: str) -> None:
        root = self._settings.repository
        if not (root / name).is_dir():
            raise ModelNotFound(f"model '{name}' has no directory in the repository")
        entries = await asyncio.to_thread(scan_model, root, name)
        failures: list[str] = []
        for entry in entries:
            held = self._models.get(name, {}).get(entry.version)
            if held is not None and held.state == "ready":
                continue
            version = await self._add(entry)
            if version.state == "failed":
                failures.append(f"{name}/{version.version}: {version.error}")
        on_disk = {entry.version for entry in entries}
        for version in [v for number, v in self._models.get(name, {}).items() if number not in on_disk]:
            await self._unload(version, forget=True)
        if not entries:
            raise LoadFailed(f"model '{name}' has no version directory (<repository>/{name}/<version>/)")
        if failures:
            raise LoadFailed(f"failed to load {'; '.join(failures)}")

    async def load_version(self, name: str, version: str) -> None:
        """Load one version from its directory, as `load_model` does for each (a no-op when it is served)."""
        if not NAME_PATTERN.match(name):
            raise ModelNotFound(f"model '{name}' not found")
        if not VERSION_PATTERN.match(version):
            raise VersionNotFound(f"model '{name}' has no version '{version}'")
        await self._operation(self._load_version(name, int(version)))

    async def _load_version(self, name: str, number: int) -> None:
        path = self._settings.repository / name / str(number)
        if not path.is_dir():
            raise VersionNotFound(f"model '{name}' has no directory for version {number} in the repository")
        current = self._models.get(name, {}).get(number)
        if current is not None and current.state == "ready":
            return
        version = await self._add(await asyncio.to_thread(read_entry, name, number, path))
        if version.state == "failed":
            raise LoadFailed(f"failed to load {name}/{number}: {version.error}")

    async def unload_model(self, name: str) -> None:
        """Unload every version of a model (see `unload_version`); it stays listed, as unloaded."""
        self.model_versions(name)  # raises ModelNotFound
        await self._operation(self._unload_model(name))

    async def _unload_model(self, name: str) -> None:
        versions = list(self._models.get(name, {}).values())
        for version in versions:
            version.state = "unloading" if version.batcher is not None else version.state
        await asyncio.gather(*(self._unload(version, forget=False) for version in versions))

    async def unload_version(self, name: str, version: str) -> None:
        """Take the version out of service at once (no new request goes to it; another version becomes the
        default), let every request it has finish, then release it. Unloaded, it stays listed while its
        directory is there; `load_*` serves it again. Waits at most the grace period for its requests."""
        found = self.lookup(name, version)
        await self._operation(self._unload(found, forget=False))

    async def poll(self) -> None:
        """Follow the repository on disk: load each version directory the registry does not hold (and retry a
        failed one whose files changed), then unload and forget each version whose directory is gone.
        Versions unloaded on request stay unloaded. Failures are logged and shown in the index."""
        await self._operation(self._poll())

    async def _poll(self) -> None:
        root = self._settings.repository
        on_disk = await asyncio.to_thread(_signatures, root)
        held = {(v.name, v.version): v for v in self.versions()}
        for (name, number), (path, files) in sorted(on_disk.items()):
            known = held.get((name, number))
            if known is None or (known.state == "failed" and known.signature != files):
                version = await self._add(await asyncio.to_thread(read_entry, name, number, path))
                if version.state == "ready":
                    log.info("poll: serving %s/%s", name, number)
        for key, version in held.items():
            if key not in on_disk:
                log.info("poll: %s/%s is gone from the repository: unloading it", *key)
                await self._unload(version, forget=True)

    async def _poll_forever(self) -> None:
        while not self._draining:
            await asyncio.sleep(self._settings.repository_poll_seconds)
            try:
                await self.poll()
            except Draining:
                return
            except Exception:  # NOTE: one bad poll (e.g. the repository briefly unreadable) must not end them all
                log.exception("polling the repository %s failed", self._settings.repository)

    async def index(self) -> list[IndexEntry]:
        """Every version the registry holds and every version directory on disk, by name then version."""
        rows: dict[tuple[str, int], IndexEntry] = {}
        try:
            on_disk = await asyncio.to_thread(version_dirs, self._settings.repository, warn=False)
        except OSError as exc:
            log.warning("could not list the repository %s: %s", self._settings.repository, exc)
            on_disk = {}
        for name, number in on_disk:
            rows[name, number] = IndexEntry(name, number, None, "not loaded")
        for v in self.versions():
            reason = {"failed": v.error or "failed", "unloaded": "unloaded"}.get(v.state, "")
            rows[v.name, v.version] = IndexEntry(v.name, v.version, v.state, reason)
        return [rows[key] for key in sorted(rows)]

    async def _operation(self, change: Coroutine[Any, Any, T]) -> T:
        """Run a change of what is served, one at a time, refused while draining. It runs as a task of the
        registry's: a caller that goes away (a client disconnecting) does not stop it halfway."""

        async def serialized() -> T:
            async with self._changing:
                if self._draining:
                    raise Draining("the server is shutting down; the repository is left as it is")
                try:
                    return await change
                finally:
                    self._update_ready_metric()

        if self._draining:
            change.close()
            raise Draining("the server is shutting down; the repository is left as it is")
        task = asyncio.get_running_loop().create_task(serialized(), name="repository-change")
        self._operations.add(task)
        task.add_done_callback(self._operation_ended)
        return await asyncio.shield(task)

    def _operation_ended(self, task: asyncio.Task[Any]) -> None:
        self._operations.discard(task)
        if not task.cancelled():
            task.exception()  # NOTE: retrieved: the caller got it, or went away (the registry logged the failure)

    async def _add(self, entry: Entry) -> ModelVersion:
        """Load `entry` into a new record that replaces the one held (unloaded or failed), if any; the record
        takes requests once loaded and warmed. Its state says how it went."""
        previous = self._models.get(entry.name, {}).get(entry.version)
        assert previous is None or previous.state in ("failed", "unloaded"), previous
        version = ModelVersion(
            entry.name,
            entry.version,
            entry.spec,
            from_start_up=previous is not None and previous.from_start_up and previous.state == "failed",
            signature=await asyncio.to_thread(signature, entry.path),
        )
        self._models.setdefault(entry.name, {})[entry.version] = version
        log.info("loading %s/%s", entry.name, entry.version)
        if entry.ok:
            await self._load(version, entry)
        else:
            self._fail(version, entry.error or "invalid entry")
        return version

    async def _unload(self, version: ModelVersion, *, forget: bool) -> None:
        """Stop routing requests to `version`, wait (at most the grace period) until every request it admitted
        is answered, bodies still being read included, then stop its batcher and drop its runtime."""
        batcher, runtime = version.batcher, version.runtime
        if batcher is not None and runtime is not None:
            version.state = "unloading"  # from here `resolve` never returns it
            log.info("unloading %s/%s: finishing its requests", version.name, version.version)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._settings.grace_period_seconds
            # NOTE: polled, not `batcher.drain()`: a request still reading its body is not queued yet.
            while any(b.busy for b in version.batchers()) and loop.time() < deadline:
                await asyncio.sleep(0.01)
            if any(b.busy for b in version.batchers()):
                log.warning("%s/%s: grace period over with requests left: they get 503", version.name, version.version)
            for each in version.batchers():
                await each.stop()
            version.batcher = version.runtime = version.stream_batcher = None
            with contextlib.suppress(KeyError):
                labels = (version.name, str(version.version), runtime.device, runtime.name)
                self._metrics.model_info.remove(*labels)
            log.info("unloaded %s/%s", version.name, version.version)
        version.state, version.error = "unloaded", None
        if forget:
            versions = self._models.get(version.name, {})
            if versions.get(version.version) is version:
                del versions[version.version]
            if not versions:
                self._models.pop(version.name, None)

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
        `strict_readiness` off, which versions failed to load and are not served. With HTTP worker
        processes, only when every one of them is ready."""
        ready, reasons = self.local_readiness()
        if ready and self.peers is not None:
            self._update_ready_metric()  # NOTE: nor may /metrics lag an answer of ready
            blocking = self.peers()
            return not blocking, blocking or reasons
        return ready, reasons

    def local_readiness(self) -> tuple[bool, list[str]]:
        """`readiness` of this process alone."""
        versions = self.versions()
        failed_of = [f"{v.name}/{v.version} failed: {v.error}" if v.state == "failed" else "" for v in versions]
        failed = [f for f in failed_of if f]
        blocking: list[str] = []
        if self._draining:
            blocking.append("draining")
        if self._loading:
            blocking.append("loading models")
        if not self._models:
            blocking.append("no models in the repository")
        if self._settings.strict_readiness:
            # NOTE: a version that fails to load later (the repository extension) leaves the others serving.
            blocking += [f for v, f in zip(versions, failed_of, strict=True) if f and v.from_start_up]
        elif not self._loading and self._models and not any(v.state == "ready" for v in versions):
            blocking.append("no model version loaded")
        if not self._draining:
            blocking += [
                f"{v.name}/{v.version}: batcher stopped" for v in versions if any(not b.running for b in v.batchers())
            ]
        if self._settings.strict_readiness:
            return not blocking, blocking
        return not blocking, blocking + failed

    def _update_ready_metric(self) -> None:
        # NOTE: this process's own: with several HTTP processes the gauge's minimum over them (livemin) is the
        # whole server's, and no process's figure waits on its view of the others
        self._metrics.ready.set(1 if self.local_readiness()[0] else 0)

    def model_versions(self, name: str) -> dict[int, ModelVersion]:
        versions = self._models.get(name)  # NOTE: every name held matches NAME_PATTERN (checked when loaded)
        if versions is None:
            raise ModelNotFound(f"model '{name}' not found")
        return versions

    def default_version(self, name: str) -> int | None:
        """The version answering requests that name none: the highest one ready."""
        return max((number for number, v in self.model_versions(name).items() if v.state == "ready"), default=None)

    def lookup(self, name: str, version: str | int | None = None) -> ModelVersion:
        """A version in any state: pinned, else the default one, else the highest not unloaded."""
        versions = self.model_versions(name)
        if version is None:
            default = self.default_version(name)
            if default is not None:
                return versions[default]
            present = [n for n, v in versions.items() if v.state not in ("unloading", "unloaded")]
            if not present:
                raise ModelNotFound(f"model '{name}' is not loaded (every version was unloaded)")
            return versions[max(present)]
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


def _signatures(root: Path) -> dict[tuple[str, int], tuple[Path, tuple[tuple[str, int, int], ...]]]:
    """Each version directory under `root` with the signature of its files."""
    return {key: (path, signature(path)) for key, path in version_dirs(root, warn=False).items()}


def _check_stream_outputs(spec: ModelJson, runtime: StreamRuntime) -> None:
    """The stream graph's outputs must fit model.json: `[B, O]` (or `[B, T, O]` per step) as the whole graph
    answers, and a state `[B, S]` of `streaming.state_size`."""
    assert spec.streaming is not None
    time, rows = min(3, spec.input.max_length), 2
    batch, lengths = zero_batch(spec, rows, time)
    state = np.zeros((rows, runtime.state_size), dtype=np.float32)
    out, state_out = (np.asarray(a) for a in runtime.predict_stream(batch, lengths, state))
    where = f"stream graph output '{spec.streaming.output}' has shape {list(out.shape)} for a batch of {rows} x {time}"
    wanted = (rows, time) if spec.streaming.per_step or spec.task == "tagging" else (rows,)
    if out.shape[: len(wanted)] != wanted or out.ndim != len(wanted) + 1:
        raise ValueError(f"{where}: expected [{', '.join(map(str, wanted))}, outputs]")
    if spec.labels is not None and out.shape[-1] != len(spec.labels):
        raise ValueError(f"{where}: expected {len(spec.labels)} outputs ({len(spec.labels)} labels)")
    if state_out.shape != state.shape:
        raise ValueError(
            f"stream graph output '{spec.streaming.state_out}' has shape {list(state_out.shape)}, "
            f"expected {list(state.shape)} (streaming.state_size {runtime.state_size})"
        )
