"""The image, running: ready in bound, the host's answers, uid 10001, PID 1, drain on SIGTERM, a mounted repository,
the health check.

Needs a container engine and the built image (minutes to build), so it runs only with SEQSERVE_IMAGE_TEST=1:
`make image-test` builds (or reuses) the image and runs this file. Containers run with the host's network and
listen on 127.0.0.1 and a free port; every container this file starts is removed by its ID, also on failure.
Figures (ready time, drain counts, host-vs-container difference) go to build/image-test.json and the output.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.deploy.conftest import ROOT

pytestmark = pytest.mark.skipif(
    os.environ.get("SEQSERVE_IMAGE_TEST") != "1",
    reason="runs the container image (needs podman or Docker and a built image): "
    "`make image-test` builds it and runs these tests with SEQSERVE_IMAGE_TEST=1",
)

ENGINE = str(ROOT / "deploy" / "image" / "engine.sh")
IMAGE = os.environ.get("SEQSERVE_IMAGE", "seqserve:cpu")
READY_BOUND_SECONDS = 60.0
"""From `run` to /readyz 200; the demo repository was ready in about 1-3 s here (2 busy cores)."""
TOLERANCE = 1e-6
FIGURES: dict[str, Any] = {}


def engine(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args[:3])}... exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def free_port() -> int:
    from tests.service.api.conftest import free_port as pick

    return pick()


@dataclass
class Container:
    id: str
    url: str
    started: float
    ready_seconds: float = field(default=float("nan"))

    def logs(self) -> str:
        result = engine("logs", self.id, check=False, timeout=30)
        return result.stdout + result.stderr

    def exec(self, *command: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        flags = [arg for name, value in (env or {}).items() for arg in ("-e", f"{name}={value}")]
        return engine("exec", *flags, self.id, *command, timeout=60, check=check).stdout

    def wait_ready(self) -> None:
        """Poll /readyz every 50 ms; ask the engine (a slower call) every 2 s whether the container still runs."""
        deadline = self.started + READY_BOUND_SECONDS
        next_state_check = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.ready_seconds = time.monotonic() - self.started
                    return
            if time.monotonic() > next_state_check:
                state = engine("inspect", "--format", "{{.State.Running}}", self.id, timeout=30).stdout.strip()
                if state != "true":
                    raise AssertionError(f"container exited before it was ready:\n{self.logs()}")
                next_state_check = time.monotonic() + 2.0
            time.sleep(0.05)
        raise AssertionError(f"not ready within {READY_BOUND_SECONDS} s:\n{self.logs()}")


@contextlib.contextmanager
def run_container(*run_flags: str, server_flags: tuple[str, ...] = ()) -> Iterator[Container]:
    """The image on the host's network, listening on 127.0.0.1 and a free port; removed (by ID) afterwards."""
    port = free_port()
    started = time.monotonic()
    result = engine(
        "run",
        "--detach",
        "--network=host",
        "-e",
        "SEQSERVE_HOST=127.0.0.1",
        "-e",
        f"SEQSERVE_PORT={port}",
        "-e",
        f"SEQSERVE_GRPC_PORT={free_port()}",
        *run_flags,
        IMAGE,
        *server_flags,
    )
    container = Container(result.stdout.strip().splitlines()[-1], f"http://127.0.0.1:{port}", started)
    try:
        container.wait_ready()
        yield container
    finally:
        engine("rm", "--force", "--volumes", container.id, check=False, timeout=60)


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[dict[str, Any]]:
    yield FIGURES
    if FIGURES:
        out = Path(os.environ.get("SEQSERVE_IMAGE_FIGURES", ROOT / "build" / "image-test.json"))
        out.parent.mkdir(parents=True, exist_ok=True)
        size = engine("image", "inspect", "--format", "{{.Size}}", IMAGE, check=False).stdout.strip()
        record = {
            "image": IMAGE,
            "engine": engine("--which").stdout.strip(),
            "size_mb": round(int(size) / 1e6) if size.isdigit() else None,
            **FIGURES,
        }
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"\nimage figures ({out}): {json.dumps(record)}")


@pytest.fixture(scope="module")
def baked_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's /models, streamed out by a container of the image (tar, no network; removed when it ends).

    `cp` from a created container does not do: /models is a volume, filled from the image when a container starts.
    """
    if engine("image", "inspect", IMAGE, check=False).returncode != 0:
        pytest.fail(f"image {IMAGE} not found: build it with `make image` (or run `make image-test`)")
    out = tmp_path_factory.mktemp("baked") / "models"
    out.mkdir()
    stream = subprocess.run(
        [ENGINE, "run", "--rm", "--network=none", "--entrypoint", "tar", IMAGE, "-C", "/models", "-cf", "-", "."],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with tarfile.open(fileobj=io.BytesIO(stream.stdout)) as archive:
        archive.extractall(out, filter="data")
    assert sorted(p.parent.parent.name for p in out.glob("*/*/model.json")) == ["names", "sunspots", "vowels"]
    return out


def test_ready_in_bound_as_uid_10001_with_the_server_as_pid_1() -> None:
    with run_container() as container:
        FIGURES["ready_seconds"] = round(container.ready_seconds, 2)
        assert container.exec("id", "-u").strip() == "10001"
        pid1 = [arg for arg in container.exec("cat", "/proc/1/cmdline").split("\0") if arg]
        assert pid1[-2:] == ["/opt/seqserve/bin/seqserve", "serve"] and "python" in pid1[0], pid1  # no shell, no init
        models = httpx.get(f"{container.url}/v1/models", timeout=10).json()["models"]
        assert sorted(m["name"] for m in models) == ["names", "sunspots", "vowels"]
        assert {v["runtime"] for m in models for v in m["versions"]} == {"onnx"}
        # The build's pip settings and the host's local indexes were mounts, not layers.
        leftovers = container.exec(
            "sh",
            "-c",
            "find /etc/pip.conf /opt/pypi /opt/wheels -mindepth 1 2>/dev/null "
            "| head -n 3; test ! -s /etc/pip.conf || echo /etc/pip.conf",
            check=False,
        )
        assert leftovers.strip() == "", leftovers
        assert "torch" not in container.exec("/opt/seqserve/bin/python", "-m", "pip", "list", "--format=freeze")


def _inputs(metadata: dict[str, Any], rng: np.random.Generator) -> list[Any]:
    spec = metadata["input"]
    if spec["kind"] == "text":
        return ["maria", "john", "andrea", "kim", "zoë", "jean-luc", "x"]
    lengths = [1, 3, 7, max(1, spec["max_length"] // 2), spec["max_length"]]
    return [rng.normal(size=(n, spec["features"])).round(4).tolist() for n in lengths]


def _max_difference(host: Any, container: Any, where: str = "") -> float:
    """Largest absolute difference between two answers' numbers; anything else must be equal."""
    if isinstance(host, dict):
        assert isinstance(container, dict) and host.keys() == container.keys(), where
        return max((_max_difference(host[k], container[k], f"{where}.{k}") for k in host), default=0.0)
    if isinstance(host, list):
        assert isinstance(container, list) and len(host) == len(container), where
        return max(
            (_max_difference(h, c, f"{where}[{i}]") for i, (h, c) in enumerate(zip(host, container, strict=True))),
            default=0.0,
        )
    if isinstance(host, float | int) and not isinstance(host, bool):
        assert isinstance(container, float | int), where
        return abs(float(host) - float(container))
    assert host == container, where
    return 0.0


def test_answers_equal_the_hosts(baked_repository: Path, tmp_path: Path) -> None:
    """The image's own repository served on the host by `python -m service` (ONNX Runtime) and by the image."""
    from tests.service.api.conftest import run_server

    rng = np.random.default_rng(7)
    differences: dict[str, float] = {}
    identical = True
    with run_server(baked_repository, "--runtime", "onnx", log_dir=tmp_path) as host, run_container() as container:
        for name in ("names", "sunspots", "vowels"):
            metadata = httpx.get(f"{container.url}/v1/models/{name}", timeout=10).json()
            inputs = _inputs(metadata, rng)
            bodies = [{"inputs": inputs}, *({"inputs": [one]} for one in inputs)]  # one batch, then one at a time
            worst = 0.0
            for body in bodies:
                answers = [
                    httpx.post(f"{url}/v1/models/{name}/predict", json=body, timeout=30)
                    for url in (host.url, container.url)
                ]
                for answer in answers:
                    assert answer.status_code == 200, answer.text
                host_json, container_json = (answer.json() for answer in answers)
                identical &= host_json == container_json
                worst = max(worst, _max_difference(host_json, container_json))
            differences[name] = worst
    FIGURES["host_vs_container"] = {"max_abs_difference": differences, "identical": identical}
    assert max(differences.values()) <= TOLERANCE, differences


@dataclass
class Outcome:
    start: float  # wall clock (time.time): compared with the server's log
    end: float
    result: str  # "200", "503 draining", "refused" (connection refused), or what went wrong


SEQUENCES_PER_REQUEST = 192
TRANSIT_SECONDS = 0.05
"""A request sent this long before the drain began had reached the server: it must be answered 200."""


def _drain_began(logs: str) -> float:
    """When the server began draining: the first of its HTTP processes' log lines saying so, one per process (UTC,
    milliseconds; the container shares the host's clock)."""
    lines = [line for line in logs.splitlines() if "SIGTERM received: draining" in line]
    assert lines, logs
    stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC) for line in lines]
    return min(stamps).timestamp()


def test_sigterm_under_load_drains_fails_nothing_and_exits_0() -> None:
    """A bounded closed loop (8 clients, at most 60 s and 4,000 requests) to 127.0.0.1; SIGTERM after ~2 s.

    One batch worker and 192 sequences a request: requests wait their turn, so several are held by the server when
    the signal lands (timed by the server's own log line, not by the engine's slower `kill`).
    """
    clients, per_client, time_bound = 8, 500, 60.0
    rng = np.random.default_rng(11)
    body = json.dumps({"inputs": rng.normal(size=(SEQUENCES_PER_REQUEST, 29, 12)).round(4).tolist()}).encode()
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    signalled = threading.Event()
    with run_container(server_flags=("--batch-workers", "1", "--max-queue", "4096")) as container:
        deadline = time.monotonic() + time_bound

        def client() -> None:
            with httpx.Client(base_url=container.url, timeout=30) as session:
                for _ in range(per_client):
                    if time.monotonic() > deadline:
                        return
                    start = time.time()
                    try:
                        answer = session.post(
                            "/v1/models/vowels/predict", content=body, headers={"content-type": "application/json"}
                        )
                        if answer.status_code == 200:
                            n = len(answer.json()["outputs"])
                            result = "200" if n == SEQUENCES_PER_REQUEST else f"200 with {n} outputs"
                        elif answer.status_code == 503 and answer.json()["error"]["code"] == "draining":
                            result = "503 draining"
                        else:
                            result = f"{answer.status_code}: {answer.text[:200]}"
                    except httpx.ConnectError as exc:
                        result = "refused" if signalled.is_set() else f"ConnectError before SIGTERM: {exc}"
                    except httpx.HTTPError as exc:
                        result = f"{type(exc).__name__}: {exc}"
                    with lock:
                        outcomes.append(Outcome(start, time.time(), result))
                    if result != "200":
                        return  # told to go elsewhere (or failed): a closed-loop client stops here

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        answered_before = len(outcomes)
        before_kill = time.time()
        engine("kill", "--signal", "TERM", container.id, timeout=30)
        signalled.set()
        for thread in threads:
            thread.join(timeout=time_bound + 30)
        status = engine("wait", container.id, timeout=60).stdout.strip().splitlines()[-1]
        exited = time.time()
        logs = container.logs()
    assert not any(thread.is_alive() for thread in threads)
    drain = _drain_began(logs)
    assert before_kill - 1 < drain < exited, (before_kill, drain, exited)  # the same clock
    in_flight = [o for o in outcomes if o.start < drain - TRANSIT_SECONDS and o.end > drain]
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.result] = counts.get(outcome.result, 0) + 1
    failed = [o.result for o in outcomes if o.result not in ("200", "503 draining", "refused")]
    FIGURES["drain"] = {
        "clients": clients,
        "requests": len(outcomes),
        "answered_before_sigterm": answered_before,
        "in_flight_at_sigterm": len(in_flight),
        "in_flight_answered_200": sum(o.result == "200" for o in in_flight),
        "latest_in_flight_answer_after_sigterm_s": round(max((o.end - drain for o in in_flight), default=0.0), 3),
        "outcomes": counts,
        "failed": len(failed),
        "exit_code": int(status),
        "exit_seconds_after_sigterm": round(exited - drain, 2),
    }
    failures = [(o.result, round(o.start - drain, 3), round(o.end - drain, 3)) for o in outcomes if o.result in failed]
    assert not failed, failures[:5]  # what failed, sent and ended when, in seconds from the drain's start
    assert answered_before > 0 and in_flight, FIGURES["drain"]
    assert all(o.result == "200" for o in in_flight), FIGURES["drain"]  # what the server held when told to stop
    assert int(status) == 0, logs
    assert "drained: every queued request answered" in logs, logs


def test_a_mounted_repository_replaces_the_baked_in_one(baked_repository: Path, tmp_path: Path) -> None:
    mounted = tmp_path / "repository"
    shutil.copytree(baked_repository / "vowels", mounted / "vowels")
    for path in [mounted, *mounted.rglob("*")]:  # readable by uid 10001
        path.chmod(0o755 if path.is_dir() else 0o644)
    with run_container("--volume", f"{mounted}:/models:ro") as container:
        models = httpx.get(f"{container.url}/v1/models", timeout=10).json()["models"]
        assert [m["name"] for m in models] == ["vowels"]
        answer = httpx.post(
            f"{container.url}/v1/models/vowels/predict", json={"inputs": [[[0.1] * 12] * 5]}, timeout=30
        )
        assert answer.status_code == 200, answer.text


def _healthcheck_command() -> list[str]:
    inspected = json.loads(engine("image", "inspect", IMAGE).stdout)[0]
    config = inspected.get("Config") or {}
    check = config.get("Healthcheck") or inspected.get("HealthCheck") or inspected.get("Healthcheck")
    assert check and check["Test"][0] == "CMD", inspected.keys()
    return list(check["Test"][1:])


def test_the_images_health_check_passes_on_its_port_and_fails_on_another() -> None:
    command = _healthcheck_command()
    assert "/healthz" in " ".join(command)
    with run_container() as container:
        container.exec(*command)  # what the engine runs: exit status 0
        wrong = engine("exec", "-e", "SEQSERVE_PORT=1", container.id, *command, check=False, timeout=60)
        assert wrong.returncode != 0, "the health check passed against a port nobody listens on"
        if engine("--which").stdout.strip() == "podman":
            result = engine("healthcheck", "run", container.id, check=False, timeout=60)
            FIGURES["podman_healthcheck_run"] = (result.stdout + result.stderr).strip() or f"exit {result.returncode}"
            assert result.returncode == 0, result.stdout + result.stderr
