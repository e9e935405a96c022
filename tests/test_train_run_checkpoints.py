"""What a killed training run leaves in its checkpoint folder, and one live run per folder."""

from __future__ import annotations

import json
import os
import time

import pytest

from dermground.train.run_checkpoints import (
    QUIET_S,
    RunBusyError,
    hold_storage_lock,
    remove_unfinished_checkpoints,
)


def _checkpoint(run, name, age_s):
    folder = run / name
    (folder / "final").mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"x" * 1000)
    (folder / "final" / "adapter_model.safetensors").write_bytes(b"y" * 500)
    then = time.time() - age_s
    for path in (folder / "final" / "adapter_model.safetensors", folder / "state.pt", folder / "final", folder):
        os.utime(path, (then, then))
    return folder


def test_unlisted_quiet_checkpoint_folders_are_removed_only_while_no_live_run_holds_the_folder(tmp_path):
    """A run killed while writing a checkpoint left a `checkpoint_*` folder that Ray's snapshot never
    names: never resumed from, never deleted, forever (a full model each at real sizes). The next run
    removes it and says so; it keeps the listed ones, one changed in the last QUIET_S (a straggling
    writer), and everything while another live run holds the storage folder."""
    storage = tmp_path / "checkpoints"
    run = storage / "run-abc"
    listed = _checkpoint(run, "checkpoint_2026-01-01_00-00-01.000001", age_s=3600)
    pending = _checkpoint(run, "checkpoint_2026-01-01_00-00-02.000001", age_s=3600)
    unfinished = _checkpoint(run, "checkpoint_2026-01-01_00-00-03.000001", age_s=3600)
    fresh = _checkpoint(run, "checkpoint_2026-01-01_00-00-04.000001", age_s=QUIET_S / 10)
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps({  # the shape Ray 2.x writes
        "checkpoint_results": [{"checkpoint_dir_name": listed.name, "metrics": {}}],
        "latest_checkpoint_result": {"checkpoint_dir_name": listed.name},
        "pending_training_results": [{"checkpoint_dir_name": pending.name}], "validated_checkpoint_dir_names": []}))

    live = hold_storage_lock(storage)  # another run in this folder, alive
    with pytest.raises(RunBusyError, match=rf"pid {os.getpid()}.*{storage}.*another --out"):
        hold_storage_lock(storage)
    live.release()

    lock = hold_storage_lock(storage)
    removed = remove_unfinished_checkpoints(run, lock)
    lock.release()
    assert removed.names == (unfinished.name,) and removed.bytes == 1500
    assert unfinished.name in removed.describe(run) and "unfinished" in removed.describe(run)
    assert listed.is_dir() and pending.is_dir() and fresh.is_dir() and not unfinished.exists()


def test_without_a_snapshot_every_quiet_checkpoint_is_unfinished_and_an_unreadable_one_keeps_all(tmp_path):
    """Killed before Ray named its first checkpoint: no snapshot, Ray starts afresh and never reads them."""
    run = tmp_path / "checkpoints" / "run-abc"
    first = _checkpoint(run, "checkpoint_a", age_s=3600)
    lock = hold_storage_lock(tmp_path / "checkpoints")
    (run / "checkpoint_manager_snapshot.json").write_text("{not json")
    assert remove_unfinished_checkpoints(run, lock).names == () and first.is_dir()  # cannot tell: keep
    (run / "checkpoint_manager_snapshot.json").unlink()
    assert remove_unfinished_checkpoints(run, lock).names == ("checkpoint_a",) and not first.exists()
    lock.release()
