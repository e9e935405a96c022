"""Writing a small JSON record whole or not at all, and durably: the records other commands trust
(version and alias records, a run's base record, a stage's "finished" marker), which a kill or a
full disk must never leave cut short."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

from dermground.platform.crash_points import maybe_crash


def durable_write_json(path: Path, data: Mapping[str, object], crash_point: str | None = None) -> None:
    """Replace `path` with `data` atomically and durably (temp file, fsync, rename, fsync folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2))
        handle.flush()
        os.fsync(handle.fileno())
    if crash_point:
        maybe_crash(crash_point)  # test hook: a kill between the new file and the rename
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
