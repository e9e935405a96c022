"""Imported by every worker of a local Ray session at its start (platform/ray_runtime.py).

Importing it claims one of the session's warm slots (as many as the session has CPUs, the
workers Ray prestarts when the session starts); a worker that gets a slot imports the embedding
stack before any work reaches it, so an embedding actor placed on it skips ~4 s of imports
(~10 s on a loaded 2-core machine). Workers started later (Ray Data's helper actors, more actors)
get no slot and import only what their own work needs: on 2 cores, every worker paying the
imports cost more than it saved (measured, docs/BENCHMARKS.md). A failure here never stops a
worker: Ray logs a failed preload and goes on.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path

WARM_DIR_ENV = "DERMGROUND_RAY_WARM_DIR"  # folder of the slot files, set by ensure_ray
WARM_SLOTS_ENV = "DERMGROUND_RAY_WARM_SLOTS"  # number of slots
WARM_MODULES_ENV = "DERMGROUND_RAY_WARM_MODULES"  # comma-separated modules a slot's worker imports
# Set (through a runtime_env) for helper actors that must not take a slot (platform/ray_runtime.py).
WARM_SKIP_ENV = "DERMGROUND_RAY_WARM_SKIP"


def _claim_slot(folder: Path, slots: int) -> int | None:
    for slot in range(slots):
        try:
            os.close(os.open(folder / f"slot-{slot}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return slot
        except FileExistsError:
            continue
    return None


def warm_up(environ: Mapping[str, str]) -> int | None:
    """Claim a slot and import the modules named in `environ`; returns the slot, None if none was left."""
    folder = environ.get(WARM_DIR_ENV)
    modules = [m for m in environ.get(WARM_MODULES_ENV, "").split(",") if m]
    if not folder or not modules or environ.get(WARM_SKIP_ENV):
        return None
    slot = _claim_slot(Path(folder), int(environ.get(WARM_SLOTS_ENV, "0") or 0))
    if slot is None:
        return None
    for name in modules:
        importlib.import_module(name)
    (Path(folder) / f"ready-{slot}").write_text(str(os.getpid()))
    return slot


def _in_ray_worker() -> bool:
    import ray

    return ray._private.worker.global_worker.mode == ray.WORKER_MODE


if _in_ray_worker():  # never in a driver or a test that imports this module
    warm_up(os.environ)
