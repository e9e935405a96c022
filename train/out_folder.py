"""The folder a training run writes (`--out`): checked writable before any image is read or Ray starts.

A read-only mount, a path under /proc or /sys, or a folder of another user failed only when the
run first wrote there: after the image checks (minutes on a real data set), with a Python
traceback, or deep inside Ray's storage set-up. The check writes and removes a probe file, because
permission bits say nothing for root on a read-only file system or in /sys.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class OutFolderError(ValueError):
    """The output folder cannot be written (the message names it, the reason and what to do)."""


def require_writable_folder(folder: str | Path, flag: str = "--out") -> None:
    """OutFolderError unless files can be created in `folder` (made if missing; what this call made is removed again)."""
    folder = Path(folder)
    made: list[Path] = []  # folders this call created, deepest last
    try:
        for part in reversed([folder, *folder.parents]):
            if not part.exists():
                part.mkdir()
                made.append(part)
        if not folder.is_dir():
            raise OutFolderError(f"{flag} {folder} is a file, not a folder; pass a folder for the run to write")
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OutFolderError(f"{flag} {folder}: cannot write there ({exc.strerror or exc}); "
                             f"pass a folder on a writable disk (check the mount and its permissions)") from None
    finally:
        for part in reversed(made):
            try:
                part.rmdir()
            except OSError:
                pass


def require_swappable_out(out: str | Path) -> None:
    """OutFolderError unless an adapter can be staged next to `out` and swapped in (train/adapter_swap.py):
    `out` and its parent folder writable, `out` not a mount point (a rename cannot move one)."""
    out = Path(out)
    require_writable_folder(out)
    require_writable_folder(out.resolve().parent, flag=f"the folder of --out {out},")
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise OutFolderError(f"--out {out} holds the current folder, which the new adapter's swap would move away; "
                             f"run the command from another folder")
    if os.path.ismount(out):
        raise OutFolderError(f"--out {out} is a mount point: a new adapter is written next to it and swapped in by a "
                             f"rename, which cannot move a mount point; pass a folder inside it, e.g. --out {out / 'adapter'}")
