"""A killed ingest: its ingest_runs row is marked `died` at the next start (a live run's row is
left alone) and the Ray processes of the session it started are stopped."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from dermground.ingest.run_locks import DIED, hold_run_lock, reap_dead_runs, session_processes
from dermground.platform.catalog import Catalog

DEADLINE_S = 120


def _running_row(catalog: Catalog, run_id: str) -> None:
    catalog.append("ingest_runs", [{"run_id": run_id, "collection": "lesions", "status": "running",
                                    "started_at": datetime.now(UTC), "source": "/data", "split": "train"}])


def _statuses(catalog: Catalog) -> dict[str, str]:
    return {r["run_id"]: r["status"] for r in catalog.query("SELECT run_id, status FROM ingest_runs")}


def test_a_run_whose_lock_is_free_is_marked_died_and_a_live_one_is_left_alone(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog")
    live = hold_run_lock(tmp_path, "live-run")
    try:
        _running_row(catalog, "live-run")
        _running_row(catalog, "old-run")  # no lock file: a run from before lock files, or a lost one
        dead = hold_run_lock(tmp_path, "dead-run")
        _running_row(catalog, "dead-run")
        dead.held.handle.close()  # what the kernel does when the process dies: the lock is free, the file stays
        reaped = reap_dead_runs(catalog, tmp_path)
        assert sorted(r.run_id for r in reaped) == ["dead-run", "old-run"]
        assert _statuses(catalog) == {"live-run": "running", "old-run": DIED, "dead-run": DIED}
        assert not (tmp_path / "ingest-runs" / "dead-run.lock").exists()
        assert reap_dead_runs(catalog, tmp_path) == []  # marked once
        row = catalog.query("SELECT * FROM ingest_runs WHERE run_id = 'dead-run'")[0]
        assert row["finished_at"] is not None and row["source"] == "/data"
    finally:
        live.release()
    assert not (tmp_path / "ingest-runs" / "live-run.lock").exists()


_KILLED_DRIVER = r"""
import sys
from datetime import UTC, datetime
from pathlib import Path
from dermground.ingest.run_locks import hold_run_lock, note_ray_session
from dermground.platform.catalog import Catalog
from dermground.platform.ray_runtime import ensure_ray
home, ray_dir = Path(sys.argv[1]), Path(sys.argv[2])
lock = hold_run_lock(home, "killed-run")
Catalog(home / "catalog").append("ingest_runs", [{"run_id": "killed-run", "collection": "lesions",
                                                  "status": "running", "started_at": datetime.now(UTC)}])
session = ensure_ray(num_cpus=1, object_store_mb=80, temp_dir=ray_dir)
note_ray_session(session)
print(session, flush=True)
import time
time.sleep(600)
"""


def test_the_ray_processes_of_a_killed_run_are_stopped_at_the_next_start(tmp_path: Path) -> None:
    ray_dir = Path(tempfile.mkdtemp(prefix="rayd", dir="/tmp"))  # short: Ray's socket paths
    # A cluster someone started on this machine (`ray start --head` writes its address there): a run
    # without --ray-address starts its own session anyway, instead of joining it (and refusing num_cpus).
    (ray_dir / "ray_current_cluster").write_text("127.0.0.1:9")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    driver = subprocess.Popen([sys.executable, "-c", _KILLED_DRIVER, str(tmp_path), str(ray_dir)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([driver.stdout], [], [], DEADLINE_S)
        assert ready, "the driver did not start Ray"
        session = driver.stdout.readline().strip()
        assert session.startswith(str(ray_dir)) and session_processes(session)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=DEADLINE_S)
    catalog = Catalog(tmp_path / "catalog")
    reaped = reap_dead_runs(catalog, tmp_path)
    # Ray's dashboard and runtime-env agents outlive a SIGKILLed driver (seen with Ray 2.x): the reaper
    # stops them; whatever it signalled is gone below, and nothing of the session is left.
    assert [r.run_id for r in reaped] == ["killed-run"]
    deadline = time.monotonic() + DEADLINE_S
    while session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_processes(session) == [], f"the dead run's processes still run after {DEADLINE_S} s"
    assert not any(Path(f"/proc/{pid}").exists() and _running(pid) for pid in reaped[0].stopped_pids)
    assert _statuses(catalog) == {"killed-run": DIED}


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
