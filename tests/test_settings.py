"""Settings: env prefix, .env support, derived locations and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dermground.platform.cli import cli
from dermground.platform.commands import context
from dermground.platform.settings import SettingsError, load_settings


# The CLI keeps the settings it loaded for the process: each test's --home must be read afresh.
pytestmark = pytest.mark.usefixtures("fresh_cli_settings")


def test_defaults_live_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DERMGROUND_HOME", str(tmp_path / "h"))
    s = load_settings()
    assert s.home == tmp_path / "h"
    assert s.base_model_dir == tmp_path / "h" / "models" / "base"
    assert s.store_dir == tmp_path / "h" / "qdrant"
    assert s.catalog_dir == tmp_path / "h" / "catalog"


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DERMGROUND_COLLECTION", raising=False)
    (tmp_path / ".env").write_text("DERMGROUND_COLLECTION=from_dotenv\n")
    assert load_settings().collection == "from_dotenv"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DERMGROUND_API_PORT", "not-a-port"), ("DERMGROUND_DEVICE", "tpu"),
     ("DERMGROUND_COLLECTION", "no spaces allowed"), ("DERMGROUND_QDRANT_SHARDS", "0"),
     ("DERMGROUND_PREDICT_SAMPLES", "-1"), ("DERMGROUND_PREDICT_SAMPLES", "100000"),
     ("DERMGROUND_PREDICT_VIEWS", "0"), ("DERMGROUND_PREDICT_VIEWS", "9"), ("DERMGROUND_PREDICT_POOL", "mode")],
)
def test_invalid_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_cli_fails_at_start_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DERMGROUND_API_PORT", "99999999")
    result = CliRunner().invoke(cli, ["attributes"])
    assert result.exit_code != 0
    assert "DERMGROUND_API_PORT" in result.output


def test_home_flag_overrides_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DERMGROUND_HOME", str(tmp_path / "env-home"))
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "flag-home"), "attributes"])
    assert result.exit_code == 0, result.output
    assert context.current_settings().home == tmp_path / "flag-home"
