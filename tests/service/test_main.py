"""`python -m service` / `seqserve serve`: flags and SEQSERVE_* variables into Settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.__main__ import build_parser, main
from service.settings import Settings


def settings_from(argv: list[str]) -> Settings:
    return Settings(**vars(build_parser().parse_args(argv)))


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"SEQSERVE_{name.upper()}", raising=False)
    settings = settings_from([])
    assert settings.repository == Path("repository")
    assert (settings.host, settings.port, settings.device, settings.runtime) == ("127.0.0.1", 8000, "auto", "auto")
    assert (settings.max_batch_size, settings.max_batch_tokens, settings.max_delay_ms) == (32, 8192, 2.0)
    assert (settings.max_queue, settings.max_body_bytes, settings.max_sequences_per_request) == (1024, 8 << 20, 256)
    assert settings.api_key is None


def test_every_setting_has_a_flag_and_a_description() -> None:
    flags = {action.dest for action in build_parser()._actions}
    for name, field in Settings.model_fields.items():
        assert name in flags
        assert field.description, f"{name} is undocumented"


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSERVE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("SEQSERVE_DEVICE", "cpu")
    monkeypatch.setenv("SEQSERVE_API_KEY", "secret")
    settings = settings_from(["--max-batch-size", "4", "--max-delay-ms", "0.5", "--access-log"])
    assert settings.max_batch_size == 4 and settings.device == "cpu" and settings.max_delay_ms == 0.5
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "secret"
    assert settings.access_log is True


def test_invalid_values_exit_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--max-batch-size", "0"]) == 2
    assert "--max-batch-size" in capsys.readouterr().err
    assert main(["--device", "tpu"]) == 2


def test_missing_repository_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--repository", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "SEQSERVE_MAX_QUEUE" in capsys.readouterr().out
