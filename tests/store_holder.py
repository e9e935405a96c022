"""A second process holding an embedded store folder open, as `dermground serve` does, for tests
of what another process may do meanwhile (the engine lets one process open a folder)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOLDER = """
import contextlib, os, sys
from dermground.platform.store.brief_hold import held_briefly
from dermground.platform.store.edge import EdgeStore
from dermground.platform.store.serving_hold import serving_at
url = os.environ.get("DERMGROUND_TEST_SERVES")
with held_briefly(sys.argv[3]) if len(sys.argv) > 3 else contextlib.nullcontext(), \\
        serving_at(url) if url else contextlib.nullcontext():
    store = EdgeStore(sys.argv[1], sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
store.close()
"""


@contextmanager
def held_by_another_process(folder: Path, collection: str, brief: str | None = None,
                            serves: str | None = None) -> Iterator[subprocess.Popen]:
    """The store folder held open by another process until the block ends (it is told to let go, then
    awaited). brief: hold it as that command's moment of reading does ("snapshot create", "check");
    serves: hold it as a `dermground serve` answering at that URL does."""
    env = {**os.environ, **({"DERMGROUND_TEST_SERVES": serves} if serves else {})}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), collection, *([brief] if brief else [])],
                              stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        yield holder
    finally:
        holder.stdin.write("\n")  # type: ignore[union-attr]
        holder.stdin.flush()  # type: ignore[union-attr]
        holder.wait(timeout=60)


def health_once_served(client, deadline_s: float = 60.0) -> dict:
    """GET /health until the API serves its store (the watcher opens it once its holder lets go);
    the served health, or an assertion naming the last refusal after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while (served := client.get("/health")).status_code != 200:
        assert time.monotonic() < deadline, served.text
        time.sleep(0.1)
    return served.json()
