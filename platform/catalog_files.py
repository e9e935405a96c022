"""Which Parquet files of a catalog table are live: the table folder's files minus those a
compaction superseded, plus the compacted files (platform/catalog_compact.py).

Each table folder may hold `_manifest.json`, replaced atomically by a compaction:

    {"compacted": ["_compacted/<stem>.parquet", ...],
     "superseded": {"<file>.parquet": [size, mtime_ns, superseded_at], ...}}

A reader reads the manifest first, then lists the folder. A compaction writes its merged file
into `_compacted/` (outside the folder's `*.parquet` listing), then swaps the manifest, and only
later deletes what it superseded; so a reader sees either every small file or the merged file,
never both and never neither. A superseded entry names the file's size and mtime: a file that a
writer later rewrites under the same name (an idempotent retry) is a new file and stays live.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "_manifest.json"
COMPACTED_DIR = "_compacted"


@dataclass
class Manifest:
    """A table folder's compaction state (empty when it was never compacted)."""

    compacted: list[str] = field(default_factory=list)
    superseded: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        return cls(list(data.get("compacted", [])), {k: list(v) for k, v in data.get("superseded", {}).items()})

    def write(self, folder: Path) -> None:
        """Replace the manifest atomically (temporary file, fsync, rename)."""
        tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump({"compacted": self.compacted, "superseded": self.superseded}, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, folder / MANIFEST)


def file_identity(path: Path) -> list[int]:
    """What a superseded entry remembers of a file: [size, mtime_ns]."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def live_files(folder: Path) -> list[Path]:
    """The Parquet files a view of this table reads now (sorted; empty when there are none)."""
    manifest = Manifest.read(folder)  # first the manifest, then the listing: see the module docstring
    files = []
    for path in sorted(folder.glob("*.parquet")):
        gone = manifest.superseded.get(path.name)
        if gone is not None:
            try:
                if file_identity(path) == gone[:2]:
                    continue
            except FileNotFoundError:  # deleted after its grace period, between listing and stat
                continue
        files.append(path)
    return [folder / name for name in manifest.compacted] + files
