"""Ingest runs that died: found and marked at the next start, their local Ray processes stopped.

Every ingest driver holds an exclusive lock on HOME/ingest-runs/<run_id>.lock while it runs (the
kernel drops the lock when the process dies, however it dies). The file also names the Ray session
the driver started itself, if it did. At the next start, `reap_dead_runs` takes every `running` row
of the catalog's ingest_runs whose lock is free (or gone): that run is dead, so it gets a `died`
row, and any process still holding files of its own Ray session (Ray's agents outlive a killed
driver) is stopped. A Ray cluster joined by address is never touched.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dermground.platform.catalog import Catalog
from dermground.platform.ingest_activity import dead_lock_info, run_lock_path
from dermground.platform.lock_file import HeldLock, hold_lock
from dermground.platform.processes import pid_alive

DIED = "died"
# SIGTERM, then SIGKILL for what is left after this long (Ray's orphaned dashboard and runtime-env
# agents do not end on SIGTERM: measured, they were still there after 10 s).
STOP_GRACE_S = 3.0
_active: RunLock | None = None  # this process's run, for note_ray_session


@dataclass
class RunLock:
    """The lock file of the run this process drives (held until `release`)."""

    run_id: str
    held: HeldLock

    @property
    def path(self) -> Path:
        return self.held.path

    def release(self) -> None:
        global _active
        if _active is self:
            _active = None
        self.held.release(remove=True)  # a run's lock file is its own: nobody else locks that name


def hold_run_lock(home: Path, run_id: str) -> RunLock:
    """Take the lock of a new run (this process's pid and host are written into it)."""
    global _active
    lock = RunLock(run_id, hold_lock(run_lock_path(home, run_id)))
    _active = lock
    return lock


def note_ray_session(session_dir: str) -> None:
    """Record in this process's run lock the Ray session it started (stopped if the run dies)."""
    if _active is not None:
        _active.held.update(ray_session=session_dir)


@dataclass(frozen=True)
class DeadRun:
    run_id: str
    collection: str
    stopped_pids: tuple[int, ...]


def reap_dead_runs(catalog: Catalog, home: Path) -> list[DeadRun]:
    """Mark each `running` run whose driver is gone as `died`; stop its own Ray processes."""
    rows = catalog.query("SELECT * FROM ingest_runs WHERE status = 'running'")
    dead = []
    for row in rows:
        path = run_lock_path(home, str(row["run_id"]))
        info = dead_lock_info(path)
        if info is None:
            continue  # its driver is alive
        stopped: tuple[int, ...] = ()
        session = info.get("ray_session")
        if isinstance(session, str) and session and info.get("host") == socket.gethostname():
            stopped = stop_session_processes(session)
        fields = {k: v for k, v in row.items() if k not in ("written_at", "status", "finished_at")}
        catalog.append("ingest_runs", [{**fields, "status": DIED, "finished_at": datetime.now(UTC)}])
        path.unlink(missing_ok=True)
        dead.append(DeadRun(str(row["run_id"]), str(row["collection"]), stopped))
    return dead


def session_processes(session_dir: str) -> list[int]:
    """Pids (this user's, this process excluded) whose command line or open files lie in the Ray
    session folder `session_dir` (Ray's agents rename their command line but keep their logs open)."""
    folder = str(Path(session_dir).resolve())
    if len(folder) < 8 or not Path("/proc").is_dir():  # never match something as broad as "/"
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if folder in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
                continue
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd).startswith(folder + "/"):
                    found.append(int(entry.name))
                    break
        except OSError:  # gone meanwhile, or another user's
            continue
    return found


def stop_session_processes(session_dir: str, grace_s: float = STOP_GRACE_S) -> tuple[int, ...]:
    """SIGTERM every process of the session, SIGKILL those still there after grace_s; their pids."""
    pids = session_processes(session_dir)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            _signal(pid, signal.SIGKILL)
    return tuple(pids)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
