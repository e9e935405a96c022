"""Local processes as Linux's /proc tells them: whether one still runs, and when it started.

Used wherever a record names the process behind it (an ingest run's lock, a version's builder):
a pid alone can be reused by an unrelated process, pid + start time cannot, and a zombie has
already ended.
"""

from __future__ import annotations

from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), None when unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    return text.rpartition(")")[2].split()  # the command name may hold spaces and parentheses


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie is waiting only to be reaped)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def process_start(pid: int) -> str | None:
    """When process `pid` started (boot id + clock ticks since boot), None when unknown or gone."""
    fields = _stat_fields(pid)
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return None if fields is None else f"{boot}:{fields[19]}"  # field 22 of stat, counted from 1
