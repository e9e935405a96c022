"""The folder a training run writes its adapter to (`--out`): checked before any image is read or Ray starts.

Beyond being writable (platform/out_folder.py), the new adapter is staged next to `--out` and swapped
in by a rename (train/adapter_swap.py), which asks more of the folder and its parent.
"""

from __future__ import annotations

import os
from pathlib import Path

from dermground.platform.out_folder import OutFolderError, require_writable_folder


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
