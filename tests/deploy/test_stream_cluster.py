"""Streams on the local cluster (3 replicas behind nginx, state in a real redis-server): a replica killed
with `kill -9` mid-stream, then a rolling restart, under streaming load: no failed chunk, no wrong answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.local_cluster import LocalCluster, phase_stream_kill, phase_stream_rolling_restart, redis_server
from deploy.stream_load import StreamWorkload, make_stream_workload
from tests.deploy.conftest import FIGURES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stream_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, StreamWorkload]]:
    from tests.service.streams.graphs import write_stream_entry

    repository = tmp_path_factory.mktemp("stream-repository")
    write_stream_entry(repository, "sensor", cell="lstm", readout="last", layers=2, max_length=48, seed=21)
    state = tmp_path_factory.mktemp("stream-cluster")
    with redis_server(state / "redis") as url, LocalCluster(repository, state, state_url=url) as cluster:
        yield cluster, make_stream_workload(repository, "sensor", cluster.replicas[0].port, streams=12)


def check(phase: str, figures: dict[str, Any]) -> None:
    FIGURES[f"streams_{phase}"] = figures
    print(phase, json.dumps(figures, indent=2))
    assert figures["chunks_sent"] > 0 and figures["streams_completed"] > 0
    assert figures["chunks_failed"] == 0, figures["errors"]
    assert figures["wrong_answers"] == 0


def test_kill_9_mid_stream_loses_no_stream(stream_cluster: tuple[LocalCluster, StreamWorkload]) -> None:
    cluster, workload = stream_cluster
    figures = phase_stream_kill(cluster, workload, clients=8, seconds=12)
    check("kill_9", figures)
    assert figures["exit_code"] == -9


def test_rolling_restart_mid_stream_loses_no_stream(stream_cluster: tuple[LocalCluster, StreamWorkload]) -> None:
    cluster, workload = stream_cluster
    figures = phase_stream_rolling_restart(cluster, workload, clients=8)
    check("rolling_restart", figures)
    assert figures["exit_codes_after_sigterm"] == [0, 0, 0]
