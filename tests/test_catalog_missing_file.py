"""A catalog missing one of its compacted files (a copy or a restore that left out a `_compacted/`
folder, a file deleted by hand): every reader names the file and the next step, instead of DuckDB's
bare 'No files found that match the pattern' (a traceback from `dermground sql`, `check` and
`catalog compact`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dermground.platform.catalog import Catalog
from dermground.platform.catalog_compact import compact
from dermground.platform.catalog_files import live_parts
from dermground.platform.cli import cli
from dermground.platform.commands import context
from tests.test_catalog_compact import _ingest_like

pytestmark = pytest.mark.usefixtures("fresh_cli_settings")


def test_a_missing_compacted_file_is_named_with_the_next_step(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from dermground.platform.api.app import create_app
    from dermground.platform.settings import Settings

    cat = Catalog(tmp_path / "catalog")
    _ingest_like(cat, 3)
    compact(cat.dir)
    lost = live_parts(cat.dir / "lesions").current
    assert lost is not None
    lost.unlink()
    named = f"lesions/_compacted/{lost.name}"

    def dermground(*args: str):
        context._current = None
        return CliRunner().invoke(cli, ["--home", str(tmp_path), *args])

    for args in (["sql", "SELECT count(*) FROM lesions"], ["sql", "SELECT 1", "--out", str(tmp_path / "r.csv")],
                 ["check", "--collection", "c1"], ["catalog", "compact"]):
        result = dermground(*args)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (args, result.output)
        assert named in result.output and "from a backup" in result.output, (args, result.output)
        # The check to run next is of this home (it said `dermground check`: the default home's catalog).
        assert f"then run `dermground --home {tmp_path} check`" in result.output, (args, result.output)
        assert "No files found" not in result.output and "--schema" not in result.output, (args, result.output)
    settings = Settings(home=tmp_path, api_read_key="r" * 16, api_admin_key="a" * 16)
    with TestClient(create_app(settings)) as client:
        response = client.post("/sql", headers={"X-API-Key": "a" * 16}, json={"query": "SELECT 1"})
    assert response.status_code == 503 and named in response.json()["detail"], response.text
