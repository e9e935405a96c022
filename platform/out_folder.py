"""The folder a long run writes (`--out` of train, pretrain, eval): checked writable before any work.

A read-only mount, a path under /proc or /sys, a file in the path or a folder of another user failed
only when the run first wrote there: after the image checks or hours of evaluation, with a Python
traceback, its results lost. The check writes and removes a probe file, because permission bits say
nothing for root on a read-only file system or in /sys, and removes the folders it made, so that a
run refused for another reason leaves no empty folder behind.
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
