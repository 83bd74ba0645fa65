"""The soak script at a few seconds: it runs, samples its windows, writes what it promises and ends
its server. No timings asserted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bench import soak


def test_windows_drift_and_table() -> None:
    recorder = soak.WindowRecorder()
    for latency_s in (0.010, 0.020, 0.030):
        recorder.answer(1.0, 1.0 + latency_s, 200)
    recorder.answer(1.0, 1.5, 503)
    recorder.answer(1.0, 1.0, -1)
    first = recorder.close(0, 0.0, 2.0, rss_mib=100.0)
    assert (first.answered, first.errors, first.error_statuses) == (3, 2, {"-1": 1, "503": 1})
    assert first.p50_ms == 20.0 and first.answered_per_s == 1.5
    recorder.answer(3.0, 3.04, 200)
    last = recorder.close(1, 2.0, 4.0, rss_mib=110.0)
    assert last.errors == 0 and last.p50_ms == last.p99_ms == 40.0
    drift = soak.drift([first, last])
    assert drift["p50_ratio"] == 2.0 and drift["rss_added_mib"] == 10.0
    assert soak.rss_mib(os.getpid()) > 1


@pytest.mark.slow
def test_a_short_soak_writes_json_and_ends_its_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    servers: list[int] = []
    real_soak = soak.soak

    async def spy(server: soak.Server, *args: Any, **kwargs: Any) -> Any:
        servers.append(server.process.pid)
        return await real_soak(server, *args, **kwargs)

    monkeypatch.setattr(soak, "soak", spy)
    out = tmp_path / "soak.json"
    code = soak.main(
        [
            "--minutes",
            str(4 / 60),
            "--window-seconds",
            "2",
            "--rate",
            "20",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert [w["index"] for w in results["windows"]] == [0, 1]
    assert all(w["answered"] > 0 and w["errors"] == 0 and w["rss_mib"] > 0 for w in results["windows"])
    assert results["settings"]["rate_source"] == "--rate" and results["saturation"] is None
    assert set(results["drift"]) >= {"p50_ratio", "p99_ratio", "rss_added_mib"}
    assert "| 2 | 2-4 |" in capsys.readouterr().out
    [pid] = servers
    assert not Path(f"/proc/{pid}").exists(), "the server it started is still running"
