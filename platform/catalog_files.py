"""Which Parquet files of a catalog table are live: the table folder's files minus those a
compaction superseded, plus the compacted files (platform/catalog_compact.py).

Each table folder may hold `_manifest.json`, replaced atomically by a compaction:

    {"compacted": ["_compacted/<stem>.parquet", ...],
     "current": "_compacted/<stem>.current.parquet" or null,
     "superseded": {"<file>.parquet": [size, mtime_ns, superseded_at], ...}}

For the tables whose view keeps the latest row per key (lesions, ingest_runs), a compaction
writes the latest rows into one `current` file and the rest into another compacted file; the
view then only has to deduplicate keys that appear again in files written since.

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
    current: str | None = None  # among `compacted`: the latest row per key at the compaction

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        return cls(list(data.get("compacted", [])), {k: list(v) for k, v in data.get("superseded", {}).items()},
                   data.get("current"))

    def write(self, folder: Path) -> None:
        """Replace the manifest atomically (temporary file, fsync, rename)."""
        tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump({"compacted": self.compacted, "current": self.current, "superseded": self.superseded}, out,
                      indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, folder / MANIFEST)


def file_identity(path: Path) -> list[int]:
    """What a superseded entry remembers of a file: [size, mtime_ns]."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


@dataclass(frozen=True)
class LiveParts:
    """A table's live files: the compacted current file (latest row per key), the other compacted
    files, and the files written since the last compaction."""

    current: Path | None
    older: list[Path]
    recent: list[Path]

    @property
    def all(self) -> list[Path]:
        return ([self.current] if self.current else []) + self.older + self.recent


def live_parts(folder: Path) -> LiveParts:
    """The live files of a table folder, by part (see LiveParts)."""
    manifest = Manifest.read(folder)  # first the manifest, then the listing: see the module docstring
    recent = _listed(folder, manifest)
    current = folder / manifest.current if manifest.current else None
    older = [folder / name for name in manifest.compacted if name != manifest.current]
    return LiveParts(current, older, recent)


def live_files(folder: Path) -> list[Path]:
    """The Parquet files a view of this table reads now (empty when there are none)."""
    return live_parts(folder).all


def _listed(folder: Path, manifest: Manifest) -> list[Path]:
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
    return files
