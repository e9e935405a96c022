"""`collections drop` in live operation: killed while it deletes a version, the version is gone from
every listing and its files (hidden under HOME/qdrant/.dropped-*) are deleted by the next drop or new
version instead of holding their disk space for good; right after a switch, while `serve` still has
the replaced version open for a moment, it waits for the server to let go instead of telling the
admin to stop the API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dermground.platform.cli import cli
from dermground.platform.crash_points import KILL_ENV
from dermground.platform.settings import load_settings
from dermground.platform.store import StoreLockedError, open_collections
from dermground.platform.store import edge_versions
from dermground.platform.store.edge_versions import EdgeCollections
from dermground.platform.store.live import LiveStore
from tests.store_holder import held_by_another_process
from tests.version_homes import home_with_versions


def test_a_drop_killed_while_deleting_leaves_no_hidden_files_after_the_next_drop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home_with_versions(home, 3)
    killed = subprocess.run([sys.executable, "-m", "dermground", "--home", str(home), "collections", "drop", "lesions",
                             "v2", "--yes"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, KILL_ENV: "drop_moved"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (left,) = (home / "qdrant").glob(".dropped-*")  # what the kill left: a whole version's files
    assert any(left.rglob("*"))

    listed = CliRunner().invoke(cli, ["--home", str(home), "collections", "list"])
    assert listed.exit_code == 0 and " v2 " not in listed.output, listed.output

    dropped = CliRunner().invoke(cli, ["--home", str(home), "collections", "drop", "lesions", "v3", "--yes"])
    assert dropped.exit_code == 0, dropped.output
    assert list((home / "qdrant").glob(".dropped-*")) == []
    assert sorted(p.name for p in (home / "qdrant").iterdir() if not p.name.startswith(".")) == ["lesions__v1"]


def test_a_drop_right_after_a_switch_waits_for_the_server_to_let_go_of_the_old_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home_with_versions(home, 2)
    served = LiveStore(EdgeCollections(home / "qdrant"), "lesions")  # what `serve` holds: v1
    try:
        assert served.count() == 1 and served.physical == "lesions__v1"
        switched = CliRunner().invoke(cli, ["--home", str(home), "collections", "switch", "lesions", "v2"])
        assert switched.exit_code == 0, switched.output
        dropped = CliRunner().invoke(cli, ["--home", str(home), "collections", "drop", "lesions", "v1", "--yes"])
        assert dropped.exit_code == 0, dropped.output  # it said "in use by ... Stop that process"
        assert served.physical == "lesions__v2" and served.count() == 1
    finally:
        served.close()
    with open_collections(load_settings(home=home)) as cols:
        assert cols.versions("lesions") == ["v2"]


def test_a_drop_of_a_version_another_process_keeps_open_says_what_to_do(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge_versions, "DROP_WAIT_S", 0.5)
    home = tmp_path / "home"
    home_with_versions(home, 2)
    with held_by_another_process(home / "qdrant" / "lesions__v2", "lesions__v2") as holder:
        with open_collections(load_settings(home=home)) as cols, pytest.raises(StoreLockedError) as refused:
            cols.drop("lesions", "v2")
    assert f"pid {holder.pid}" in str(refused.value) and "run the drop again in a moment" in str(refused.value)
    with open_collections(load_settings(home=home)) as cols:
        assert cols.versions("lesions") == ["v1", "v2"]


def test_a_drop_that_waited_in_vain_on_a_brief_holder_says_it_finishes_on_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge_versions, "DROP_WAIT_S", 0.5)
    home = tmp_path / "home"
    home_with_versions(home, 2)
    with held_by_another_process(home / "qdrant" / "lesions__v2", "lesions__v2", brief="check") as check:
        dropped = CliRunner().invoke(cli, ["--home", str(home), "collections", "drop", "lesions", "v2", "--yes"])
    assert dropped.exit_code == 1, dropped.output
    # It said "Any other process (an ingest or a restore building it): stop it first."
    assert f"pid {check.pid}" in dropped.output and "`dermground check` reads it for a moment" in dropped.output
    assert "run the drop again in a moment" in dropped.output and "stop it first" not in dropped.output
    again = CliRunner().invoke(cli, ["--home", str(home), "collections", "drop", "lesions", "v2", "--yes"])
    assert again.exit_code == 0, again.output  # the check let go
    with open_collections(load_settings(home=home)) as cols:
        assert cols.versions("lesions") == ["v1"]
