"""Which ingest runs are writing a collection version right now (for commands that must not read a
half-written version: `snapshot create`).

Every ingest driver holds an exclusive lock on HOME/ingest-runs/<run_id>.lock for its whole run
(ingest/run_locks.py takes it; the kernel drops it when the process dies, however it dies) and
records a `running` row in the catalog's ingest_runs, under the physical version it writes, before
it writes any point. A `running` row whose lock is held is a live writer; one whose lock is free
(or gone) is a run that died.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dermground.platform.catalog import Catalog
from dermground.platform.lock_file import held_by, record_if_free

RUN_LOCK_DIR = "ingest-runs"


def run_lock_path(home: Path, run_id: str) -> Path:
    """The lock file an ingest run holds while it runs."""
    return Path(home) / RUN_LOCK_DIR / f"{run_id}.lock"


def dead_lock_info(path: Path) -> dict[str, object] | None:
    """The lock file's content when no process holds it (or {} when it is gone); None while held."""
    return record_if_free(path)


@dataclass(frozen=True)
class ActiveIngest:
    """An ingest run whose driver is alive and writing `collection` (a physical version)."""

    run_id: str
    collection: str
    source: str | None
    started_at: object
    pid: object
    host: object

    def describe(self) -> str:
        return (f"ingest run {self.run_id} (pid {self.pid} on {self.host}, from {self.source or '?'}, "
                f"started {self.started_at})")


def active_ingests(catalog: Catalog, home: Path, collection: str) -> list[ActiveIngest]:
    """The ingest runs writing physical collection `collection` now (their lock is held)."""
    rows = catalog.query("SELECT run_id, source, started_at FROM ingest_runs "
                         "WHERE status = 'running' AND collection = ? ORDER BY started_at", [collection])
    found = []
    for row in rows:
        path = run_lock_path(home, str(row["run_id"]))
        holder = held_by(path)
        if holder is None:
            continue  # its driver is gone: the next ingest marks it `died`
        found.append(ActiveIngest(str(row["run_id"]), collection, row["source"], row["started_at"],
                                  holder.get("pid", "?"), holder.get("host", "?")))
    return found


def runs_of(catalog: Catalog, collection: str) -> set[str]:
    """Every ingest run recorded under physical collection `collection`, whatever its status."""
    return {str(r["run_id"]) for r in catalog.query(
        "SELECT DISTINCT run_id FROM ingest_runs_history WHERE collection = ?", [collection])}


__all__ = ["RUN_LOCK_DIR", "ActiveIngest", "active_ingests", "dead_lock_info", "run_lock_path", "runs_of"]
