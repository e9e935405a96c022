"""Which snapshot of a Hugging Face cache folder (models--ORG--NAME) a user means: the one refs/main names.

`huggingface-cli download ORG/NAME` without --local-dir fills ~/.cache/huggingface/hub/models--ORG--NAME:
snapshots/<commit>/ per downloaded revision and refs/main holding the commit of the branch's latest
download. A folder that had two revisions downloaded holds two snapshots, and the newest on disk is
not necessarily main (a pinned older revision fetched later, or files touched by a copy), so the hint
follows refs/main as transformers does, and says when it had to guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CacheSnapshot:
    """The snapshot folder to point at and, when it was not the one refs/main names, why (else "")."""

    folder: Path
    note: str = ""

    def hint(self, flag: str) -> str:
        """'point FLAG at its snapshot folder ...' with the note, if any, in brackets."""
        return f"point {flag} at its snapshot folder {self.folder}" + (f" ({self.note})" if self.note else "")


def cache_snapshot(repo: Path, marker: str) -> CacheSnapshot | None:
    """The snapshot of the cache folder `repo` holding `marker` (config.json, adapter_config.json) that refs/main
    names; the newest such snapshot, with a note, when refs/main is missing or names none of them; None when no
    snapshot holds `marker`."""
    snapshots = sorted((p.parent for p in repo.glob(f"snapshots/*/{marker}")), key=lambda p: p.stat().st_mtime)
    if not snapshots:
        return None
    try:
        main = (repo / "refs" / "main").read_text().strip()
    except OSError:
        main = ""
    if main and (repo / "snapshots" / main / marker).is_file():
        return CacheSnapshot(repo / "snapshots" / main)
    newest = snapshots[-1]
    if len(snapshots) == 1 and not main:
        return CacheSnapshot(newest)
    why = (f"refs/main names revision {main}, which has no snapshot with {marker} here" if main
           else "there is no refs/main to say which revision is main")
    return CacheSnapshot(newest, f"the newest of its {len(snapshots)} snapshot(s): {why}")
