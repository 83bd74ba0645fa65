"""Cores this process may use: affinity capped by a container's CPU quota."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.runtime.cpu import cpu_cores


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2, 1.5 cores: rounded up
        ({"cpu.max": "max 100000\n"}, None),  # cgroup v2 without a quota
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cpu_cores_follow_a_container_cpu_quota(tmp_path: Path, files: dict[str, str], limit: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    available = cpu_cores(tmp_path / "absent")
    expected = available if limit is None else min(available, limit)
    assert cpu_cores(tmp_path) == expected
