"""A local cluster: Debian's nginx on 127.0.0.1 in front of N `seqserve serve` replicas.

    python deploy/local_cluster.py --repository repository             # serve until Ctrl-C
    python deploy/local_cluster.py --repository repository --measure deploy/cluster-results.json

nginx runs the same `deploy/nginx/seqserve.conf` as the compose deployment,
as a child process (`daemon off;`) with its own prefix, config, pid and logs
in a state folder; replicas are `python -m service` on free ports. Everything
listens on 127.0.0.1 only, and everything started here is stopped by its PID.

`--measure` runs the scenario the test suite runs (tests/deploy/test_local_cluster.py):
spread over the replicas, a rolling restart under load, `kill -9` of one
replica under load, and throughput with 3 replicas vs 1, then writes the
figures as JSON. The load is bounded in count and time and goes to 127.0.0.1 only.

`--redis` keeps stream state in a `redis-server` started here (127.0.0.1, a free port, no
persistence, stopped by its PID), so any replica serves any stream's next chunk.
`--measure-streams` runs the streaming scenario on such a cluster: streams sent in chunks
(deploy/stream_load.py) while one replica is killed with `kill -9`, then while every replica
is restarted in turn; it counts failed chunks and wrong answers.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "deploy" / "nginx" / "seqserve.conf"
HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 60.0
FAIL_TIMEOUT_SECONDS = 2  # nginx passive health: a failed replica is left out this long
REPLICA_FLAGS = ("--batch-workers", "1", "--onnx-threads", "1", "--grace-period-seconds", "20")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition`; a guard against hanging, not a speed check."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def status_of(port: int, path: str) -> int | None:
    try:
        return http_get(port, path, timeout=2.0)[0]
    except OSError:
        return None


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> int:
    """SIGTERM the process started here, by its PID; SIGKILL it if it outlives `timeout`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


@dataclass
class Replica:
    index: int
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


class LocalCluster:
    """N replicas and one nginx, all children of this process. Use as a context manager."""

    def __init__(
        self,
        repository: Path,
        state_dir: Path,
        *,
        replicas: int = 3,
        python: str = sys.executable,
        nginx: str | None = None,
        port: int | None = None,
        replica_flags: Sequence[str] = REPLICA_FLAGS,
        state_url: str | None = None,
    ) -> None:
        self.repository = repository.resolve()
        self.state_url = state_url  # SEQSERVE_STATE_URL of every replica: stream state in Redis
        self.state_dir = state_dir.resolve()
        self.python = python
        self.nginx_binary = nginx or shutil.which("nginx") or "/usr/sbin/nginx"
        self.port = port or free_port()
        self.replica_flags = tuple(replica_flags)
        self.replicas = [
            Replica(i, free_port(), self.state_dir / f"replica-{i}.log") for i in range(replicas)
        ]
        self.nginx: subprocess.Popen[bytes] | None = None
        self.access_log = self.state_dir / "access.log"
        self.error_log = self.state_dir / "error.log"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            for replica in self.replicas:
                self.start_replica(replica.index, wait=False)
            for replica in self.replicas:
                self.wait_ready(replica.index)
            self._write_nginx_config([r.address for r in self.replicas])
            self._start_nginx()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop nginx and every replica this cluster started (by PID), even after a failure."""
        if self.nginx is not None:
            # SIGQUIT: nginx's graceful shutdown; SIGTERM would be its fast one.
            with contextlib.suppress(ProcessLookupError):
                if self.nginx.poll() is None:
                    self.nginx.send_signal(signal.SIGQUIT)
            try:
                self.nginx.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait(timeout=10)
        for replica in self.replicas:
            if replica.process is not None:
                stop_process(replica.process, timeout=30)

    # -- replicas ------------------------------------------------------------

    def start_replica(self, index: int, *, wait: bool = True) -> None:
        replica = self.replicas[index]
        if replica.process is not None and replica.process.poll() is None:
            raise RuntimeError(f"replica {index} is already running")
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SEQSERVE_")}
        environment.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
        if self.state_url is not None:
            environment["SEQSERVE_STATE_URL"] = self.state_url
        command = [self.python, "-m", "service", "--repository", str(self.repository),
                   "--host", HOST, "--port", str(replica.port), "--grpc-port", "0", *self.replica_flags]
        with open(replica.log_path, "ab") as log:
            replica.process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log,
                                               stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(index)

    def wait_ready(self, index: int) -> None:
        replica = self.replicas[index]

        def ready() -> bool:
            assert replica.process is not None
            if replica.process.poll() is not None:
                raise RuntimeError(f"replica {index} exited with {replica.process.returncode}:\n"
                                   + replica.log_path.read_text(errors="replace")[-4000:])
            return status_of(replica.port, "/readyz") == 200

        wait_until(ready, START_TIMEOUT_SECONDS, f"replica {index} ready")

    def stop_replica(self, index: int) -> int:
        """SIGTERM: the replica drains (readiness off, 503 draining, queued work finished) and exits."""
        replica = self.replicas[index]
        assert replica.process is not None
        code = stop_process(replica.process)
        replica.exit_codes.append(code)
        return code

    def kill_replica(self, index: int) -> int:
        """SIGKILL: no drain; what it was computing is lost to it (nginx retries elsewhere)."""
        replica = self.replicas[index]
        assert replica.process is not None
        replica.process.kill()
        code = replica.process.wait(timeout=10)
        replica.exit_codes.append(code)
        return code

    # -- nginx ---------------------------------------------------------------

    def _write_nginx_config(self, addresses: Sequence[str]) -> None:
        d = self.state_dir
        (d / "tmp").mkdir(exist_ok=True)
        servers = "".join(f"server {a} max_fails=1 fail_timeout={FAIL_TIMEOUT_SECONDS}s;\n" for a in addresses)
        (d / "seqserve-replicas.conf").write_text(servers)
        (d / "seqserve-listen.conf").write_text(
            f"listen {HOST}:{self.port};\naccess_log {self.access_log} seqserve;\n"
        )
        temp = " ".join(f"{name}_temp_path {d / 'tmp' / name};" for name in
                        ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (d / "nginx.conf").write_text(
            "# Written by deploy/local_cluster.py: a foreground nginx in this folder.\n"
            "daemon off;\n"
            "worker_processes 1;\n"
            f"pid {d / 'nginx.pid'};\n"
            f"error_log {self.error_log} notice;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"    {temp}\n"
            f"    include {NGINX_CONF};\n"
            "}\n"
        )

    def _nginx_command(self, *extra: str) -> list[str]:
        d = self.state_dir
        return [self.nginx_binary, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(self.error_log), *extra]

    def _start_nginx(self) -> None:
        check = subprocess.run(self._nginx_command("-t", "-q"), capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
        with open(self.state_dir / "nginx.out", "ab") as out:
            self.nginx = subprocess.Popen(self._nginx_command(), stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: self._nginx_alive() and status_of(self.port, "/readyz") == 200, 30, "nginx up")

    def _nginx_alive(self) -> bool:
        assert self.nginx is not None
        if self.nginx.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.nginx.returncode}:\n{self.error_log.read_text()}")
        return True

    def _nginx_workers(self) -> set[int]:
        assert self.nginx is not None
        pid = self.nginx.pid
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return {int(p) for p in text.split()}

    def set_upstream(self, indices: Sequence[int]) -> None:
        """Route to these replicas only."""
        self.set_upstream_addresses([self.replicas[i].address for i in indices])

    def set_upstream_addresses(self, addresses: Sequence[str]) -> None:
        """Rewrite nginx's server list, SIGHUP our nginx (by PID), wait until only new workers run."""
        assert self.nginx is not None
        self._write_nginx_config(addresses)
        old = self._nginx_workers()
        self.nginx.send_signal(signal.SIGHUP)
        wait_until(lambda: self._nginx_alive() and bool(self._nginx_workers())
                   and not (self._nginx_workers() & old), 30, "nginx reload")

    # -- what nginx saw ------------------------------------------------------

    def log_mark(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def access_records(self, since: int = 0, kind: str = "/predict") -> list[dict[str, str]]:
        """nginx's records of requests whose path has `kind` (`/predict`, or `/streams/` for stream chunks)."""
        with open(self.access_log, "rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
        records = []
        for line in lines:
            fields = dict(part.split("=", 1) for part in line.split("\t") if "=" in part)
            uri = fields.get("uri", "")
            if (kind == "/predict" and uri.endswith("/predict")) or (kind != "/predict" and kind in uri):
                records.append(fields)
        return records

    def stream_retries(self, since: int) -> int:
        """Stream chunks nginx tried on more than one replica (a replica killed, draining or restarting)."""
        return sum("," in r["upstream"] for r in self.access_records(since, "/streams/"))


# -- bounded load --------------------------------------------------------------


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    wrong: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return self.sent - self.ok

    @property
    def requests_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Workload:
    """Requests that go round: a path, bodies, and each body's expected outputs (from one direct call)."""

    path: str
    bodies: tuple[bytes, ...]
    expected: tuple[Any, ...]


def make_workload(repository: Path, model: str | None, port: int, *, bodies: int = 8,
                  sequences: int = 4, seed: int = 7) -> Workload:
    """Feature-model requests of mixed lengths, answered once by one replica for reference."""
    meta = None
    for path in sorted(repository.glob("*/*/model.json")):
        candidate = json.loads(path.read_text())
        if candidate["input"]["kind"] == "features" and model in (None, candidate["name"]):
            meta = candidate
            break
    if meta is None:
        raise ValueError(f"no feature model {model or ''} in {repository}")
    rng = random.Random(seed)
    features, longest = meta["input"]["features"], min(meta["input"]["max_length"], 40)
    path = f"/v1/models/{meta['name']}/predict"
    payloads, expected = [], []
    for _ in range(bodies):
        inputs = [[[round(rng.gauss(0, 1), 4) for _ in range(features)] for _ in range(rng.randint(2, longest))]
                  for _ in range(sequences)]
        body = json.dumps({"inputs": inputs}).encode()
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"reference request failed: {response.status} {answer[:300]!r}")
        payloads.append(body)
        expected.append(json.loads(answer)["outputs"])
    return Workload(path, tuple(payloads), tuple(expected))


def same_outputs(got: Any, want: Any, atol: float = 1e-4) -> bool:
    """Equal up to `atol` in every number (answers may come from different batches on different replicas)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(same_outputs(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same_outputs, got, want))
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, int | float) and math.isclose(got, want, rel_tol=0, abs_tol=atol)
    return bool(got == want)


def run_load(port: int, workload: Workload, *, concurrency: int, max_requests: int, max_seconds: float,
             stop: threading.Event | None = None) -> LoadResult:
    """`concurrency` clients with keep-alive connections to 127.0.0.1:`port`, until `max_requests`
    are sent, `max_seconds` pass or `stop` is set, whichever comes first."""
    result = LoadResult()
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds
    stop = stop or threading.Event()

    def take() -> int | None:
        with lock:
            if result.sent >= max_requests or stop.is_set() or time.monotonic() > deadline:
                return None
            result.sent += 1
            return result.sent

    def client() -> None:
        conn: http.client.HTTPConnection | None = None
        while (n := take()) is not None:
            i = n % len(workload.bodies)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, port, timeout=60)
                conn.request("POST", workload.path, workload.bodies[i], {"Content-Type": "application/json"})
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                with lock:
                    result.statuses["error"] += 1
                    result.errors.append(repr(exc))
                continue
            right = response.status == 200 and same_outputs(json.loads(body)["outputs"], workload.expected[i])
            with lock:
                result.statuses[str(response.status)] += 1
                if right:
                    result.ok += 1
                elif response.status == 200:
                    result.wrong += 1
                if response.status != 200 and len(result.errors) < 20:
                    result.errors.append(f"{response.status} {body[:300]!r}")
        if conn is not None:
            conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, name=f"load-{k}") for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max_seconds + 120)
    result.seconds = time.monotonic() - started
    return result


@contextlib.contextmanager
def background_load(port: int, workload: Workload, *, concurrency: int, max_requests: int,
                    max_seconds: float) -> Iterator[Callable[[], LoadResult]]:
    """Load in a thread while the body runs; the callable stops it and returns the result."""
    stop = threading.Event()
    box: list[LoadResult] = []
    thread = threading.Thread(
        target=lambda: box.append(run_load(port, workload, concurrency=concurrency, max_requests=max_requests,
                                           max_seconds=max_seconds, stop=stop)),
        name="load",
    )
    thread.start()

    def finish() -> LoadResult:
        stop.set()
        thread.join(timeout=max_seconds + 180)
        return box[0]

    try:
        yield finish
    finally:
        stop.set()
        thread.join(timeout=max_seconds + 180)


# -- the scenario (the test suite runs the same steps) ---------------------------


def summary(cluster: LocalCluster, load: LoadResult, since: int) -> dict[str, Any]:
    """Requests sent and failed, and which replica answered each (nginx's $upstream_addr, last try)."""
    records = cluster.access_records(since)
    answered: Counter[str] = Counter()
    retried = 0
    for record in records:
        tries = [a.strip() for a in record["upstream"].split(",")]  # one address per try
        retried += len(tries) > 1
        if record["status"] == "200":
            answered[tries[-1]] += 1
    total = sum(answered.values())
    return {
        "requests_sent": load.sent,
        "requests_ok": load.ok,
        "requests_failed": load.failed,
        "wrong_answers": load.wrong,
        "statuses": dict(load.statuses),
        "errors": load.errors[:5],
        # nginx's own record of a request that failed: every replica tried and what each answered.
        "failed_in_nginx": [r for r in records if r["status"] != "200"][:5],
        "seconds": round(load.seconds, 2),
        "requests_per_second": round(load.requests_per_second, 1),
        "retried_on_another_replica": retried,
        "per_replica": {
            f"replica-{r.index}": {"requests": answered[r.address],
                                   "share": round(answered[r.address] / total, 3) if total else 0.0}
            for r in cluster.replicas
        },
    }


def phase_spread(cluster: LocalCluster, workload: Workload, requests: int = 300) -> dict[str, Any]:
    mark = cluster.log_mark()
    load = run_load(cluster.port, workload, concurrency=6, max_requests=requests, max_seconds=120)
    return summary(cluster, load, mark)


def phase_rolling_restart(cluster: LocalCluster, workload: Workload) -> dict[str, Any]:
    """Under load: SIGTERM one replica, wait for its exit, start it again, wait until ready; the next."""
    mark = cluster.log_mark()
    codes = []
    with background_load(cluster.port, workload, concurrency=6, max_requests=20_000, max_seconds=240) as finish:
        time.sleep(1)
        for replica in cluster.replicas:
            codes.append(cluster.stop_replica(replica.index))
            cluster.start_replica(replica.index)
            time.sleep(FAIL_TIMEOUT_SECONDS + 0.5)  # as a rollout would: the next only once nginx uses this one
        load = finish()
    return {**summary(cluster, load, mark), "exit_codes_after_sigterm": codes}


def phase_kill(cluster: LocalCluster, workload: Workload, index: int = 1) -> dict[str, Any]:
    """Under load: `kill -9` one replica, start it again, keep the load on a little longer."""
    mark = cluster.log_mark()
    with background_load(cluster.port, workload, concurrency=6, max_requests=20_000, max_seconds=180) as finish:
        time.sleep(2)
        code = cluster.kill_replica(index)
        time.sleep(2)
        cluster.start_replica(index)
        time.sleep(FAIL_TIMEOUT_SECONDS + 1)
        load = finish()
    return {**summary(cluster, load, mark), "killed": f"replica-{index}", "exit_code": code}


def phase_throughput(cluster: LocalCluster, workload: Workload, requests: int = 1500) -> dict[str, Any]:
    """The same bounded load through the same nginx, routed to all replicas, then to one."""
    figures = {}
    for label, upstream in (("replicas_3", range(len(cluster.replicas))), ("replicas_1", [0])):
        cluster.set_upstream(list(upstream))
        run_load(cluster.port, workload, concurrency=8, max_requests=100, max_seconds=30)  # warm connections
        mark = cluster.log_mark()
        load = run_load(cluster.port, workload, concurrency=8, max_requests=requests, max_seconds=120)
        figures[label] = summary(cluster, load, mark)
    cluster.set_upstream(range(len(cluster.replicas)))
    one, three = figures["replicas_1"]["requests_per_second"], figures["replicas_3"]["requests_per_second"]
    return {**figures, "speedup_3_vs_1": round(three / one, 2) if one else None, "cpu_cores": os.cpu_count()}


def measure(repository: Path, state_dir: Path, model: str | None = None) -> dict[str, Any]:
    with LocalCluster(repository, state_dir) as cluster:
        workload = make_workload(repository, model, cluster.replicas[0].port)
        return {
            "setup": {"replicas": len(cluster.replicas), "nginx": cluster.nginx_binary,
                      "replica_flags": list(cluster.replica_flags), "model": workload.path,
                      "sequences_per_request": 4},
            "spread": phase_spread(cluster, workload),
            "rolling_restart": phase_rolling_restart(cluster, workload),
            "kill_9": phase_kill(cluster, workload),
            "throughput": phase_throughput(cluster, workload),
        }


@contextlib.contextmanager
def redis_server(state_dir: Path, binary: str | None = None) -> Iterator[str]:
    """Debian's redis-server on 127.0.0.1 and a free port, without persistence; yields its URL and
    stops it by its PID, also after a failure."""
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [binary or shutil.which("redis-server") or "/usr/bin/redis-server", "--bind", HOST,
               "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(state_dir)]
    with open(state_dir / f"redis-{port}.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        def pong() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
            return False

        wait_until(pong, 20, "redis-server answers PING")
        yield f"redis://{HOST}:{port}/0"
    finally:
        stop_process(process, timeout=10)


def phase_stream_kill(
    cluster: LocalCluster, workload: Any, index: int = 1, clients: int = 12, seconds: float = 30
) -> dict[str, Any]:
    """Streams under way while one replica is killed with `kill -9`, then started again."""
    from deploy.stream_load import background_stream_load

    mark = cluster.log_mark()
    with background_stream_load(cluster.port, workload, clients=clients, max_seconds=seconds) as finish:
        time.sleep(3)
        code = cluster.kill_replica(index)
        time.sleep(2)
        cluster.start_replica(index)
        time.sleep(FAIL_TIMEOUT_SECONDS + 2)
        load = finish()
    retried = cluster.stream_retries(mark)
    return {**load.figures(), "retried_on_another_replica_by_nginx": retried, "killed": f"replica-{index}",
            "exit_code": code}


def phase_stream_rolling_restart(cluster: LocalCluster, workload: Any, clients: int = 12) -> dict[str, Any]:
    """Streams under way while each replica in turn gets SIGTERM (drains), exits and starts again."""
    from deploy.stream_load import background_stream_load

    codes = []
    mark = cluster.log_mark()
    with background_stream_load(cluster.port, workload, clients=clients, max_seconds=240) as finish:
        time.sleep(2)
        for replica in cluster.replicas:
            codes.append(cluster.stop_replica(replica.index))
            cluster.start_replica(replica.index)
            time.sleep(FAIL_TIMEOUT_SECONDS + 0.5)
        load = finish()
    return {**load.figures(), "retried_on_another_replica_by_nginx": cluster.stream_retries(mark),
            "exit_codes_after_sigterm": codes}


def measure_streams(repository: Path, state_dir: Path, model: str | None = None) -> dict[str, Any]:
    from deploy.stream_load import make_stream_workload

    with redis_server(state_dir / "redis") as url, LocalCluster(repository, state_dir, state_url=url) as cluster:
        workload = make_stream_workload(repository, model, cluster.replicas[0].port)
        return {
            "setup": {"replicas": len(cluster.replicas), "state": "redis-server", "model": workload.model,
                      "streams_in_workload": len(workload.cases), "chunk_steps": "1-8, with offsets"},
            "kill_9": phase_stream_kill(cluster, workload),
            "rolling_restart": phase_stream_rolling_restart(cluster, workload),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("repository"))
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--port", type=int, default=8080, help="nginx's port on 127.0.0.1")
    parser.add_argument("--state-dir", type=Path, help="nginx config, logs and replica logs (default: a temp dir)")
    parser.add_argument("--measure", type=Path, metavar="JSON", help="run the scenario, write its figures, exit")
    parser.add_argument("--model", help="feature model to load with --measure (default: the first one)")
    parser.add_argument("--redis", action="store_true", help="keep stream state in a redis-server started here")
    parser.add_argument("--measure-streams", type=Path, metavar="JSON",
                        help="run the streaming scenario (Redis state), write its figures, exit")
    args = parser.parse_args(argv)
    if not args.repository.is_dir():
        parser.error(f"repository {args.repository} is not a directory (make models builds the demo one)")
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="seqserve-cluster-"))
    if args.measure_streams:
        results = measure_streams(args.repository, state_dir, args.model)
        text = json.dumps(results, indent=2)
        args.measure_streams.write_text(text + "\n")
        print(text)
        print(f"wrote {args.measure_streams}; logs in {state_dir}")
        return 0
    if args.measure:
        results = measure(args.repository, state_dir, args.model)
        text = json.dumps(results, indent=2)
        args.measure.write_text(text + "\n")
        print(text)
        print(f"wrote {args.measure}; logs in {state_dir}")
        return 0
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(redis_server(state_dir / "redis")) if args.redis else None
        cluster = stack.enter_context(
            LocalCluster(args.repository, state_dir, replicas=args.replicas, port=args.port, state_url=url)
        )
        print(f"nginx on {cluster.url} in front of "
              + ", ".join(f"replica-{r.index} ({r.address})" for r in cluster.replicas)
              + (f"; stream state in {url}" if url else ""))
        print(f"logs and nginx config in {state_dir}; Ctrl-C stops everything")
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        with contextlib.suppress(KeyboardInterrupt):
            stopped.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
