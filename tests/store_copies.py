"""Copies of embedded stores (and homes holding them) for tests that change a copy.

The engine's files are mostly holes (its WAL and chunk files are created at full size): a plain
shutil.copytree writes every hole as zeros, ~260 MB per collection, where a sparse copy writes
~1 MB, in a fraction of the time, and leaves the disk's write-back to the tests that wait on it.
"""

from __future__ import annotations

from pathlib import Path

from dermground.platform.store.edge_versions import copy_sparse


def copy_store(src: Path, dst: Path) -> Path:
    """Copy folder `src` to `dst` (which must not exist; its parents are made), holes kept as holes."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    copy_sparse(src, dst)
    return dst
