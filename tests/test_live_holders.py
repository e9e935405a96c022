"""The records that name the process holding something (an embedded store's owner file), as the
commands that run beside it read them: a holder that died is never taken for a running one, and a
holder that reads for a moment (`snapshot create`, `check`) is waited for by a `serve` started meanwhile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from dermground.platform.api import create_app
from dermground.platform.catalog import Catalog, CatalogError
from dermground.platform.catalog_compact import compact, hold_compaction_lock
from dermground.platform.cli import cli
from dermground.platform.collection_ops import create_snapshot
from dermground.platform.crash_points import KILL_ENV
from dermground.platform.lock_file import LockBusy, held_by, hold_lock, record_if_free
from dermground.platform.processes import process_start
from dermground.platform.commands.serve import open_served_store
from dermground.platform.settings import load_settings
from dermground.platform.store import CollectionSpec, VersionMeta
from dermground.platform.store.edge_versions import EdgeCollections
from dermground.platform.store.serving_hold import local_url
from dermground.platform.store.versions import READY, physical_name
from tests.store_holder import health_once_served, held_by_another_process
from tests.version_homes import home_with_versions

DIM = 8

# Opens the version's store and ends without closing it (as a killed process does): its owner
# file stays behind, naming a pid that is gone.
_DIE_HOLDING = """
import os, sys
from dermground.platform.store.edge import EdgeStore
EdgeStore(sys.argv[1], sys.argv[2])
os._exit(0)
"""


def _version(cols: EdgeCollections, name: str) -> str:
    version = cols.create_version(name, VersionMeta(source="test"))
    with cols.open_version(name, version) as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp"))
    cols.write_meta(name, version, VersionMeta(source="test", state=READY, points=0))
    return version


def test_a_dead_holder_whose_pid_now_names_another_process_is_not_taken_for_a_holder(tmp_path: Path) -> None:
    cols = EdgeCollections(tmp_path / "store")
    version = _version(cols, "c")
    folder = cols.store_dir / physical_name("c", version)
    dead = subprocess.run([sys.executable, "-c", _DIE_HOLDING, str(folder), physical_name("c", version)],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert dead.returncode == 0, dead.stderr
    owner_file = folder / "owner.json"
    owner = json.loads(owner_file.read_text())
    assert owner["pid"] != os.getpid()
    assert cols.holder("c", version) is None  # its pid is gone
    # The pid is reused: it now names a running process (this one), which started at another time.
    owner_file.write_text(json.dumps({**owner, "pid": os.getpid()}))
    assert cols.holder("c", version) is None
    assert not cols.held_elsewhere("c", version)
    # The record itself still counts while its process runs: this process holding the version.
    with cols.open_version("c", version):
        assert cols.holder("c", version) is not None


@pytest.mark.usefixtures("fresh_cli_settings")
def test_serve_started_while_a_snapshot_reads_the_live_version_waits_for_it_then_serves(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    home_with_versions(home, 1)
    settings = load_settings(home=home).model_copy(update={"collection": "lesions"})
    folder = settings.store_dir / "lesions__v1"
    with held_by_another_process(folder, "lesions__v1", brief="snapshot create") as snapshot:
        store = open_served_store(settings)  # it said "in use by pid ... Stop that process" and exited
        try:
            client = TestClient(create_app(settings, store=store))
            waiting = client.get("/health")
            assert waiting.status_code == 503, waiting.text
            assert f"pid {snapshot.pid}" in waiting.json()["detail"] and "as soon as" in waiting.json()["detail"]
            said = capsys.readouterr().err
            assert f"`dermground snapshot create` (pid {snapshot.pid}" in said and "503" in said, said
        except BaseException:
            store.close()
            raise
    try:
        assert health_once_served(client)["points"] == 1
    finally:
        store.close()
    # Another serve holding the live version is refused as before, naming it; the refusal said "`dermground
    # serve` and `dermground ingest` cannot share an embedded store", but an ingest runs beside a serve.
    with held_by_another_process(folder, "lesions__v1") as other_serve:
        refused = CliRunner().invoke(cli, ["--home", str(home), "serve", "--collection", "lesions"])
    assert refused.exit_code == 1 and f"pid {other_serve.pid}" in refused.output, refused.output
    assert "cannot share" not in refused.output and "a second `dermground serve`" in refused.output, refused.output


def test_snapshot_create_marks_its_hold_of_the_live_version_as_brief(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home_with_versions(home, 1)
    settings = load_settings(home=home)
    owner_file = settings.store_dir / "lesions__v1" / "owner.json"
    seen: list[dict[str, object]] = []
    create_snapshot(settings, "lesions", progress=lambda _n: seen.append(json.loads(owner_file.read_text())))
    assert seen and all(o["pid"] == os.getpid() and o["brief"] == "snapshot create" for o in seen), seen
    assert not owner_file.exists()  # let go


@pytest.mark.usefixtures("fresh_cli_settings")
def test_a_compaction_refused_while_another_runs_names_the_process_and_the_next_step(tmp_path: Path) -> None:
    home = tmp_path / "home"
    catalog_dir = load_settings(home=home).catalog_dir
    catalog_dir.mkdir(parents=True)
    # The holder may be an ingest compacting at its finish: the refusal said "another `dermground
    # catalog compact` is running" without a pid.
    with hold_compaction_lock(catalog_dir):
        refused = CliRunner().invoke(cli, ["--home", str(home), "catalog", "compact"])
    assert refused.exit_code == 1, refused.output
    assert f"being compacted by pid {os.getpid()} (`" in refused.output, refused.output
    assert "Wait for it to finish" in refused.output and f"--home {home} catalog compact" in refused.output
    done = CliRunner().invoke(cli, ["--home", str(home), "catalog", "compact"])  # the lock went with its holder
    assert done.exit_code == 0, done.output


def test_a_lock_file_names_its_holder_only_while_it_is_held(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "x.lock"
    held = hold_lock(path, purpose="test")
    with pytest.raises(LockBusy) as busy:
        hold_lock(path)
    assert busy.value.holder["pid"] == os.getpid() and busy.value.holder["purpose"] == "test"
    assert busy.value.holder["started"] == process_start(os.getpid())
    assert held_by(path) == held.record and record_if_free(path) is None
    held.release()
    assert held_by(path) is None and record_if_free(path) == {}  # released: no record is left to mislead
    killed = hold_lock(path)
    killed.handle.close()  # what the kernel does when its process dies: the record stays, the lock goes
    assert held_by(path) is None and record_if_free(path) == killed.record


def test_a_compaction_where_its_lock_file_cannot_be_written_says_so_instead_of_a_traceback() -> None:
    readonly = Path("/sys/kernel")  # a folder nobody may create a file in, root included (a read-only mount)
    if not readonly.is_dir():
        pytest.skip("no /sys/kernel on this machine")
    with pytest.raises(CatalogError, match=r"cannot take the compaction lock /sys/kernel/\.compact\.lock .*writable"):
        compact(readonly)


def test_a_compaction_killed_before_its_swap_leaves_no_file_behind_after_the_next_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    catalog = Catalog(load_settings(home=home).catalog_dir)
    for i in range(3):
        catalog.append("lesions", [{"isic_id": f"ISIC_{i:07d}", "split": "train", "collection": "c"}])
    rows = catalog.query("SELECT isic_id FROM lesions ORDER BY isic_id")
    killed = subprocess.run([sys.executable, "-m", "dermground", "--home", str(home), "catalog", "compact"],
                            env={**os.environ, KILL_ENV: "compact_merged"}, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    merged = catalog.dir / "lesions" / "_compacted"
    left = sorted(p.name for p in merged.iterdir())
    assert left and catalog.query("SELECT isic_id FROM lesions ORDER BY isic_id") == rows  # the merged file is not live
    compact(catalog.dir)
    # The next compaction swapped in its own merged file and deleted the killed one's, which no view read.
    assert not set(left) & {p.name for p in merged.iterdir()}
    assert catalog.query("SELECT isic_id FROM lesions ORDER BY isic_id") == rows


@pytest.mark.usefixtures("fresh_cli_settings")
def test_a_version_the_engine_cannot_load_is_listed_and_can_be_dropped(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home_with_versions(home, 2)
    # v2's files are damaged (a copy cut short by a full disk, say): the engine cannot load it.
    (load_settings(home=home).store_dir / "lesions__v2" / "shard" / "edge_config.json").write_text("garbage")
    listed = CliRunner().invoke(cli, ["--home", str(home), "collections", "list"])
    # It was: "Error: cannot open the embedded store .../lesions__v2: ...", no version listed, exit 1.
    assert listed.exit_code == 0, listed.output
    assert "* lesions v1 (lesions__v1): 1 points" in listed.output, listed.output
    assert "lesions v2" in listed.output and "cannot be opened" in listed.output
    assert f"--home {home} collections drop lesions v2" in listed.output
    refused = CliRunner().invoke(cli, ["--home", str(home), "collections", "switch", "lesions", "v2"])
    assert refused.exit_code == 1 and "cannot be opened" in refused.output, refused.output  # live, it would fail
    dropped = CliRunner().invoke(cli, ["--home", str(home), "collections", "drop", "lesions", "v2", "--yes"])
    assert dropped.exit_code == 0, dropped.output
    assert not (load_settings(home=home).store_dir / "lesions__v2").exists()
    after = CliRunner().invoke(cli, ["--home", str(home), "collections", "list"])
    assert after.exit_code == 0 and "v2" not in after.output and "lesions v1" in after.output, after.output


@pytest.mark.usefixtures("fresh_cli_settings")
def test_a_cli_search_refused_by_a_running_serve_points_to_its_api_instead_of_stopping_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home_with_versions(home, 1)
    folder = load_settings(home=home).store_dir / "lesions__v1"
    url = local_url("0.0.0.0", 8123)  # nothing listens: the address is only read from the owner record
    assert url == "http://127.0.0.1:8123/" and local_url("::1", 8123) == "http://[::1]:8123/"
    with held_by_another_process(folder, "lesions__v1", serves=url) as serve:
        refused = CliRunner().invoke(cli, ["--home", str(home), "search", "--id", "ISIC_0000001", "--k", "3",
                                           "--collection", "lesions"])
    assert refused.exit_code == 1, refused.output
    # It said "in use by pid ... Stop that process, or run both against a Qdrant server".
    assert f"`dermground serve` (pid {serve.pid}" in refused.output, refused.output
    assert ("curl -X POST http://127.0.0.1:8123/search -H 'Content-Type: application/json' -d "
            '\'{"mode": "image_text", "k": 3, "isic_id": "ISIC_0000001"}\'') in refused.output, refused.output
    assert f"open {url} in a browser" in refused.output and "Stop that process" not in refused.output
    # A holder that is no serve (an ingest writing in place, a restore) is still named, to be stopped.
    with held_by_another_process(folder, "lesions__v1") as other:
        still = CliRunner().invoke(cli, ["--home", str(home), "search", "--id", "ISIC_0000001",
                                         "--collection", "lesions"])
    assert still.exit_code == 1 and f"pid {other.pid}" in still.output and "Stop that process" in still.output
