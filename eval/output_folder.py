"""The folder an evaluation writes into, checked before any work, so that a bad `--out` costs nothing.

An evaluation searches or predicts for minutes to hours; a folder that cannot be made (a file in
its path, no permission) found only when the results are written lost them all. The check makes
nothing: a run refused for another reason leaves no empty folder behind.
"""

from __future__ import annotations

import os
from pathlib import Path


class OutputFolderError(ValueError):
    """The `--out` folder cannot be made or written; the message says why and what to do."""


def check_output_folder(path: str | Path) -> Path:
    """`path`, when it is a folder that can be written into or made; OutputFolderError naming it otherwise."""
    folder = Path(path).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:  # exists() is False past a file, too
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"has a file in its path ({existing})"
        raise OutputFolderError(f"--out {path} {where}, not a folder: choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputFolderError(f"--out {path} cannot be written: {existing} is not writable for this user; "
                                "choose another --out")
    return Path(path)
