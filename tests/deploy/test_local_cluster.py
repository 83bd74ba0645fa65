"""The local cluster under bounded load: Debian's nginx on 127.0.0.1 in front of 3 replicas.

Spread over every replica; a rolling restart and a `kill -9` fail no request
(nginx retries a refused, reset or 503 draining try on another replica);
throughput with 3 replicas vs 1 is recorded, not asserted (2 cores here).
Every answer is also checked against one replica's answer to the same body.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deploy.local_cluster import (
    LocalCluster,
    Workload,
    free_port,
    make_workload,
    phase_kill,
    phase_rolling_restart,
    phase_spread,
    phase_throughput,
    run_load,
    summary,
)
from tests.deploy.conftest import FIGURES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(feat_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("cluster")
    with LocalCluster(feat_repository, state) as running:
        yield running
    (state / "figures.json").write_text(json.dumps(FIGURES, indent=2))


@pytest.fixture(scope="module")
def workload(cluster: LocalCluster, feat_repository: Path) -> Workload:
    return make_workload(feat_repository, "feat", cluster.replicas[0].port)


def record(phase: str, figures: dict[str, Any]) -> None:
    """Keep the figures for the terminal summary (and figures.json), and print them."""
    FIGURES[phase] = figures
    print(phase, json.dumps(figures, indent=2))


def brief(figures: dict[str, Any]) -> dict[str, Any]:
    keep = ("requests_sent", "requests_failed", "wrong_answers", "retried_on_another_replica", "requests_per_second")
    shares = {name: replica["share"] for name, replica in figures["per_replica"].items()}
    return {**{k: figures[k] for k in keep}, "share": shares}


def assert_nothing_failed(figures: dict[str, Any]) -> None:
    assert figures["requests_sent"] > 0
    assert figures["requests_failed"] == 0, (figures["errors"], figures["failed_in_nginx"])
    assert figures["wrong_answers"] == 0, figures
    assert figures["statuses"] == {"200": figures["requests_sent"]}, figures


def test_requests_spread_over_all_replicas(cluster: LocalCluster, workload: Workload) -> None:
    figures = phase_spread(cluster, workload, requests=300)
    record("spread", brief(figures))
    assert_nothing_failed(figures)
    for name, replica in figures["per_replica"].items():
        assert replica["share"] >= 0.2, f"{name} got {replica['share']:.0%} of the requests: {figures}"


def test_rolling_restart_under_load_fails_no_request(cluster: LocalCluster, workload: Workload) -> None:
    figures = phase_rolling_restart(cluster, workload)
    record("rolling_restart", {**brief(figures), "exit_codes_after_sigterm": figures["exit_codes_after_sigterm"]})
    assert figures["exit_codes_after_sigterm"] == [0, 0, 0]
    assert_nothing_failed(figures)
    for name, replica in figures["per_replica"].items():
        assert replica["requests"] > 0, f"{name} answered nothing: {figures}"


def test_kill_9_under_load_fails_no_request(cluster: LocalCluster, workload: Workload) -> None:
    figures = phase_kill(cluster, workload, index=1)
    record(
        "kill_9",
        {
            **brief(figures),
            "killed": figures["killed"],
            "errors": figures["errors"],
            "failed_in_nginx": figures["failed_in_nginx"],
        },
    )
    assert figures["exit_code"] == -9
    # NOTE: before replicas wrote each answer's head and body in one write (service/wire.py),
    # about one run in 12-20 lost a request here: killed between the two writes, a replica left
    # nginx a 200 head without its body, too late to retry (client: IncompleteRead).
    assert_nothing_failed(figures)


class _Draining(BaseHTTPRequestHandler):
    """Answers every request as a draining replica does: 503 draining, Retry-After."""

    hits = 0

    def do_POST(self) -> None:
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"error": {"code": "draining", "message": "shutting down"}}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_nginx_retries_a_refused_connection_and_a_503_on_another_replica(
    cluster: LocalCluster, workload: Workload
) -> None:
    """Deterministic: one address refuses, one answers 503 draining, one is a replica; POSTs all succeed."""
    draining = ThreadingHTTPServer(("127.0.0.1", 0), _Draining)
    thread = threading.Thread(target=draining.serve_forever, name="draining")
    thread.start()
    refused = f"127.0.0.1:{free_port()}"  # nothing listens there
    answering = f"127.0.0.1:{draining.server_address[1]}"
    replica = cluster.replicas[0].address
    try:
        cluster.set_upstream_addresses([refused, answering, replica])
        mark = cluster.log_mark()
        load = run_load(cluster.port, workload, concurrency=1, max_requests=12, max_seconds=60)
        figures = summary(cluster, load, mark)
    finally:
        draining.shutdown()
        thread.join(timeout=10)
        draining.server_close()
        cluster.set_upstream(range(len(cluster.replicas)))
    assert_nothing_failed(figures)
    tried = [record["upstream"] for record in cluster.access_records(mark)]
    assert any(refused in t for t in tried) and _Draining.hits >= 1, tried
    assert all(t.split(",")[-1].strip() == replica for t in tried), tried


def test_throughput_with_3_replicas_and_with_1_is_recorded(cluster: LocalCluster, workload: Workload) -> None:
    figures = phase_throughput(cluster, workload, requests=1500)
    record(
        "throughput",
        {
            "replicas_3_requests_per_second": figures["replicas_3"]["requests_per_second"],
            "replicas_1_requests_per_second": figures["replicas_1"]["requests_per_second"],
            "speedup_3_vs_1": figures["speedup_3_vs_1"],
            "cpu_cores": figures["cpu_cores"],
        },
    )
    assert_nothing_failed(figures["replicas_3"])
    assert_nothing_failed(figures["replicas_1"])
    assert figures["replicas_1"]["per_replica"]["replica-0"]["share"] == 1.0
