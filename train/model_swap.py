"""Putting a newly pre-trained model into `pretrain --out`: staged next to it, checked, then swapped in.

Copying the new model's files over `--out` one by one left, after a crash or a full disk mid-copy,
a folder of old and new files (the new weights beside the old config, or half a shard) that loads
as a model nobody trained, or not at all. Now the whole new model (weights, tokenizer, image
processor, dermground_pretrain.json) is written to the sibling folder `.<out>.staging` and checked
there (every file a checkpoint needs, weights whole: platform/model/checkpoint_check.py); only then
are the two folders exchanged in one rename (train/adapter_swap.py's exchange) and the old model
removed. A crash at any point leaves either the old model or the new one whole in `--out`, and the
next `pretrain` into it finishes or undoes the interrupted swap (adapter_swap.recover_interrupted_swap).

A model folder is replaced whole, so `--out` must be new, empty or an earlier pretrain's output:
files of anything else in it would be lost with the old folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from dermground.platform.out_folder import OutFolderError
from dermground.train.adapter_swap import exchange_folders, lock_file, recover_interrupted_swap, staging_folder
from dermground.train.run_checkpoints import hold_run_lock

PRETRAIN_METADATA_FILE = "dermground_pretrain.json"  # written last into every model pretrain saves


class ModelNotSavedError(RuntimeError):
    """The new model could not be written or failed its check; the folder in --out is unchanged."""


def require_replaceable_out(out: Path) -> list[str]:
    """OutFolderError unless `out` is missing, empty or a model pretrain wrote; finishes an interrupted swap first
    (what it did, one line each). RunBusyError while another pretrain swaps its model into `out`."""
    lock = hold_run_lock(lock_file(out), out)  # a live swap's staging folder is not an interrupted one
    try:
        done = recover_interrupted_swap(out) if out.is_dir() or staging_folder(out).exists() else []
    finally:
        lock.release()
    if not out.is_dir():
        return done
    names = sorted(os.listdir(out))
    if names and PRETRAIN_METADATA_FILE not in names:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise OutFolderError(
            f"--out {out} holds files pretrain did not write ({shown}: no {PRETRAIN_METADATA_FILE}); pretrain replaces "
            "the whole folder with the new model, so they would be lost. Pass a new or empty folder as --out, or move "
            f"those files away (a folder left by an interrupted pretrain of an older version can be deleted)")
    return done


def swap_in_model(out: Path, write: Callable[[Path], None]) -> None:
    """Replace the model in `out` (or create `out`) by the one `write(folder)` writes, once its files check out.

    On any failure before the swap the staging folder is removed and ModelNotSavedError says that
    `out` is unchanged.
    """
    lock = hold_run_lock(lock_file(out), out)  # one swap at a time: a pretrain starting meanwhile is refused
    try:
        _swap_in_model(out, write)
    finally:
        lock.release()


def _swap_in_model(out: Path, write: Callable[[Path], None]) -> None:
    from dermground.platform.model.checkpoint_check import file_problems

    staging = staging_folder(out)
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir(parents=True)
        write(staging)
        problems = file_problems(staging)
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelNotSavedError(
            f"the pre-trained model could not be saved ({type(exc).__name__}: {exc}); {out} is unchanged and the run's "
            "checkpoints are kept: free disk space if it was full, then re-run the same command (it resumes at the "
            "last step and saves again)") from None
    if problems:
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelNotSavedError(f"the pre-trained model failed its check ({problems[0]}); {out} is unchanged")
    try:
        if out.exists():
            exchange_folders(staging, out)
        else:
            os.rename(staging, out)
    except OSError as exc:  # e.g. --out is a mount point, which cannot be renamed
        recover_interrupted_swap(out)  # the old model stays (or is put back); the staged one goes
        raise ModelNotSavedError(f"the pre-trained model could not be swapped into {out} ({exc}); {out} is unchanged "
                                 "and the run's checkpoints are kept: pass an --out that is a folder of its own "
                                 "(not a mount point) and re-run the same command (it saves again)") from None
    if staging.exists():
        shutil.rmtree(staging)  # the old model
