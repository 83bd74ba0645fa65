"""Servers for gRPC tests: `python -m service` over HTTP and gRPC (`SEQSERVE_GRPC_PORT`) on 127.0.0.1, killed by PID."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tritonclient.grpc as triton

from tests.service.api.conftest import ROOT, START_TIMEOUT_SECONDS, Server, _wait_until_up, free_port, stop
from tests.service.conftest import BuiltRepository

API_KEY = "grpc-test-key"
SMALL_BODY_BYTES = 4096


@dataclass
class Servers:
    http: Server
    grpc_url: str  # host:port, as tritonclient.grpc takes it

    def client(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(url=self.grpc_url)


@contextlib.contextmanager
def run_servers(repository: Path, *flags: str, log_dir: Path, env: dict[str, str] | None = None) -> Iterator[Servers]:
    http_port, grpc_port = free_port(), free_port()
    log_path = log_dir / f"server-{http_port}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SEQSERVE_")}
    environment.update(
        {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "SEQSERVE_GRPC_PORT": str(grpc_port), **(env or {})}
    )
    command = [sys.executable, "-m", "service", "--repository", str(repository), "--port", str(http_port), *flags]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    servers = Servers(Server(process, f"http://127.0.0.1:{http_port}", log_path), f"127.0.0.1:{grpc_port}")
    try:
        _wait_until_up(servers.http, ready=True)
        _wait_until_live(servers)
        yield servers
    finally:
        stop(process)


def _wait_until_live(servers: Servers) -> None:
    """The gRPC server starts after the HTTP one: poll ServerLive (a guard against hanging, not a speed check)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    client = servers.client()
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(triton.InferenceServerException):
                if client.is_server_live(client_timeout=2.0):
                    return
            time.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"gRPC not live after {START_TIMEOUT_SECONDS} s:\n{servers.http.log()}")


@pytest.fixture(scope="session")
def servers(test_repository: BuiltRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """One shared server over the test repository, no API key."""
    with run_servers(test_repository.path, "--max-delay-ms", "5", log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture(scope="session")
def keyed_servers(test_repository: BuiltRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """A server with an API key and a small message limit (`SMALL_BODY_BYTES`)."""
    with run_servers(
        test_repository.path,
        "--max-body-bytes",
        str(SMALL_BODY_BYTES),
        log_dir=tmp_path_factory.mktemp("logs"),
        env={"SEQSERVE_API_KEY": API_KEY},
    ) as running:
        yield running
