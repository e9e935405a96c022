"""Test hook for crash windows of live operations (restore, switch), like ingest/writer.py's.

DERMGROUND_TEST_KILL_AT=<point> SIGKILLs this process when it reaches <point>; the fault suite
(tests/test_snapshot_faults.py) proves that every such kill leaves a live version.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "DERMGROUND_TEST_KILL_AT"
KILL_POINTS = ("restore_loaded", "restore_catalogued", "alias_written", "snapshot_written", "drop_moved",
               "pretrain_half_copied", "compact_merged")


def maybe_crash(point: str) -> None:
    """SIGKILL this process if the test hook names `point`."""
    if os.environ.get(KILL_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
