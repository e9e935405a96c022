"""A second process holding an embedded store folder open, as `dermground serve` does, for tests
of what another process may do meanwhile (the engine lets one process open a folder)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOLDER = """
import sys
from dermground.platform.store.edge import EdgeStore
store = EdgeStore(sys.argv[1], sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
store.close()
"""


@contextmanager
def held_by_another_process(folder: Path, collection: str) -> Iterator[subprocess.Popen]:
    """The store folder held open by another process until the block ends (it is told to let go, then awaited)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), collection], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        yield holder
    finally:
        holder.stdin.write("\n")  # type: ignore[union-attr]
        holder.stdin.flush()  # type: ignore[union-attr]
        holder.wait(timeout=60)
