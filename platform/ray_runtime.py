"""Starting or joining Ray with the settings this machine needs.

Ray's defaults assume a big machine: here a local session gets a bounded object store, no
dashboard and no usage reporting; with an address it joins an existing cluster instead.
"""

from __future__ import annotations

import os
from pathlib import Path

# Must be in the environment before `import ray` spawns anything.
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DEDUP_LOGS": "0",
}


def ensure_ray(address: str | None = None, num_cpus: int | None = None,
               object_store_mb: int = 512, temp_dir: Path | None = None) -> str | None:
    """Connect to Ray once per process: join `address`, or start a small local session.

    Returns the session folder when this call started a local session (its processes belong to
    this process: see ingest/run_locks.py), else None."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return None
    if address:
        ray.init(address=address, log_to_driver=False)
        return None
    kwargs: dict[str, object] = {
        "num_cpus": num_cpus or os.cpu_count() or 1,
        "include_dashboard": False,
        "object_store_memory": object_store_mb * 1024 * 1024,
        "log_to_driver": False,
    }
    if temp_dir is not None:
        # Ray's socket paths must stay short (AF_UNIX limit 107 bytes).
        temp_dir.mkdir(parents=True, exist_ok=True)
        kwargs["_temp_dir"] = str(temp_dir.resolve())
    context = ray.init(**kwargs)
    return str(context.address_info.get("session_dir") or "") or None
