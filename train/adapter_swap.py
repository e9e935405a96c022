"""Putting a newly trained adapter into `--out`: staged next to it, verified, then swapped in by a rename.

Copying the new files over an existing adapter one by one left, after a crash or a full disk
mid-copy, a folder of old and new files that loads as neither. Instead the new adapter (weights,
config, metadata) is written to the sibling folder `.<out>.staging` and checked there (whole files,
shapes that fit the base: platform/model/adapter_fit.py). Only then is the rest of `--out` (the
run's checkpoints, anything else the operator keeps there) moved into the staging folder, listed
first in CARRIED_FILE, and the two folders are exchanged in one rename (renameat2 RENAME_EXCHANGE;
where the file system lacks it, two renames through `.<out>.previous`). The old adapter is removed
last. A crash at any point leaves either the old adapter or the new one whole, and
`recover_interrupted_swap` (run at the next start) moves the carried entries back or finishes.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

CARRIED_FILE = ".dermground-carried.json"  # in the staging folder: what was moved there from --out
# Old weights files not carried into the new adapter: a loader could take them for the new adapter's.
NOT_CARRIED = ("adapter_model.safetensors", "adapter_model.bin")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class AdapterNotSavedError(RuntimeError):
    """The new adapter could not be written or failed its check; the one in --out is unchanged."""


def staging_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.staging"


def previous_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.previous"


def lock_file(out: Path) -> Path:
    """The lock a training run into `out` holds (next to it: --out itself is swapped)."""
    return out.parent / f".{out.name}.lock"


def recover_interrupted_swap(out: Path) -> list[str]:
    """Undo or finish a swap a crash interrupted (hold the run's lock); what was done, one line each."""
    done: list[str] = []
    previous, staging = previous_folder(out), staging_folder(out)
    if previous.exists():
        if out.exists():  # the second rename happened: previous is the replaced adapter
            shutil.rmtree(previous)
        else:
            os.rename(previous, out)
            done.append(f"put the adapter back in {out} (a swap was interrupted between its two renames)")
    if staging.exists():
        carried_list = staging / CARRIED_FILE
        if carried_list.is_file():  # interrupted while carrying: move back what had been carried
            back = [name for name in json.loads(carried_list.read_text())
                    if (staging / name).exists() and not (out / name).exists()]
            out.mkdir(parents=True, exist_ok=True)
            for name in back:
                os.rename(staging / name, out / name)
            if back:
                done.append(f"moved {', '.join(back)} back into {out} (a save of a new adapter was interrupted)")
        # Without the list it holds a new adapter never swapped in, or the old one after the exchange.
        shutil.rmtree(staging)
    (out / CARRIED_FILE).unlink(missing_ok=True)  # the exchange carried the list into --out
    return done


def swap_in_adapter(out: Path, write: Callable[[Path], None], verify: Callable[[Path], None]) -> None:
    """Replace the adapter in `out` by the one `write(folder)` writes, once `verify(folder)` passes.

    On any failure before the swap the staging folder is removed and AdapterNotSavedError says that
    `out` is unchanged.
    """
    staging = staging_folder(out)
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir()
        write(staging)
        verify(staging)
    except AdapterNotSavedError as exc:  # the check's own verdict, with its own next step
        shutil.rmtree(staging, ignore_errors=True)
        raise AdapterNotSavedError(f"{exc}; the adapter in {out} is unchanged") from None
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise AdapterNotSavedError(
            f"the new adapter could not be saved ({_reason(exc)}); the adapter in {out} is unchanged "
            f"and the run's checkpoints are kept: free disk space if it was full, then re-run the same command "
            f"(it resumes at the last step and saves again)") from None
    out.mkdir(parents=True, exist_ok=True)
    carried = sorted(name for name in os.listdir(out)
                     if not (staging / name).exists() and name not in NOT_CARRIED)
    listing = staging / CARRIED_FILE
    listing.write_text(json.dumps(carried))
    with open(listing, "rb") as handle:  # on disk before anything moves: recovery reads it
        os.fsync(handle.fileno())
    try:
        for name in carried:
            os.rename(out / name, staging / name)
        exchange_folders(staging, out)
    except OSError as exc:
        recover_interrupted_swap(out)  # everything carried goes back; the old adapter stays
        raise AdapterNotSavedError(f"the new adapter could not be swapped into {out} ({exc}); the adapter there is "
                                   "unchanged and the run's checkpoints are kept: re-run the same command "
                                   "(it saves again), or pass an --out on a local disk") from None
    (out / CARRIED_FILE).unlink()
    shutil.rmtree(staging)  # the old adapter


def check_new_adapter(folder: Path, base: Path) -> None:
    """The check a new adapter passes before it replaces the old one: whole files, shapes that fit `base`
    (a BackboneError otherwise), and finite weights (AdapterNotSavedError: a diverged run's are NaN)."""
    import torch
    from safetensors.torch import load_file

    from dermground.platform.model.adapter_fit import require_adapter_fits

    require_adapter_fits(folder, base)
    weights = load_file(folder / "adapter_model.safetensors")
    bad = sorted(name for name, tensor in weights.items() if not torch.isfinite(tensor).all())
    if bad:
        raise AdapterNotSavedError(
            f"the new adapter was not saved: {len(bad)} of its {len(weights)} weight tensors hold NaN or infinite "
            f"values (e.g. {bad[0]}): the training diverged; train again with a lower --lr (a new configuration "
            f"starts from step 0; resuming this one resumes the diverged weights)")


def _reason(exc: Exception) -> str:
    """One line for a failure; shutil.copytree's Error lists every file that failed: the first says why."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        first = exc.args[0][0]
        return str(first[-1]) + (f" (and {len(exc.args[0]) - 1} more files)" if len(exc.args[0]) > 1 else "")
    return f"{type(exc).__name__}: {exc}"


def exchange_folders(new: Path, out: Path) -> None:
    """Swap the two folders' names in one step, or in two renames where the file system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(out), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(out))
    previous = previous_folder(out)
    os.rename(out, previous)
    os.rename(new, out)
    os.rename(previous, new)  # where the exchange would have left the old adapter
