"""A new adapter replaces the one in --out only whole and checked (train/adapter_swap.py)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from dermground.platform.model.adapter_fit import require_adapter_fits
from dermground.train.adapter_swap import (
    CARRIED_FILE,
    AdapterNotSavedError,
    check_new_adapter,
    recover_interrupted_swap,
    staging_folder,
    swap_in_adapter,
)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, make_tiny_adapter, tmp_path_factory):
    """Two real adapters of the tiny model (seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("adapters")
    return make_tiny_adapter(tiny_model_dir, root / "old", seed=0), make_tiny_adapter(tiny_model_dir, root / "new", seed=1)


def _out_with_old_adapter(tmp_path: Path, old: Path) -> Path:
    out = shutil.copytree(old, tmp_path / "adapter")
    (out / "dermground_adapter.json").write_text('{"steps": 100}')
    (out / "checkpoints" / "run-1").mkdir(parents=True)
    (out / "checkpoints" / "run-1" / "state.pt").write_bytes(b"state")
    (out / "notes.txt").write_text("the operator's own file")
    return out


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _writer(new: Path, *, cut: bool = False, disk_full: bool = False):
    def write(folder: Path) -> None:
        for item in new.iterdir():
            data = item.read_bytes()
            (folder / item.name).write_bytes(data[: len(data) // 2] if cut and item.suffix == ".safetensors" else data)
            if disk_full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / item.name))
        (folder / "dermground_adapter.json").write_text('{"steps": 200}')

    return write


@pytest.mark.parametrize("failure", ["cut weights fail the check", "disk full mid-write"])
def test_a_new_adapter_that_fails_mid_save_leaves_the_old_one_intact(failure, adapters, tiny_model_dir, tmp_path):
    """The new files were copied over the old ones one by one: a full disk or a crash mid-copy left
    old and new files mixed in --out. Now they are written next to it and checked first; a failure
    leaves --out as it was, byte for byte, and says so."""
    old, new = adapters
    out = _out_with_old_adapter(tmp_path, old)
    before = _contents(out)
    write = _writer(new, cut=failure.startswith("cut"), disk_full=failure.startswith("disk"))
    with pytest.raises(AdapterNotSavedError, match=rf"the adapter in {out} is unchanged.*re-run the same command"):
        swap_in_adapter(out, write, lambda folder: require_adapter_fits(folder, tiny_model_dir))
    assert _contents(out) == before
    assert not staging_folder(out).exists()


def test_a_checked_adapter_is_swapped_in_keeping_the_checkpoints_and_other_files(adapters, tiny_model_dir, tmp_path):
    old, new = adapters
    out = _out_with_old_adapter(tmp_path, old)
    (out / "adapter_model.bin").write_bytes(b"an old adapter's weights in the older format")
    swap_in_adapter(out, _writer(new), lambda folder: require_adapter_fits(folder, tiny_model_dir))
    after = _contents(out)
    assert after["adapter_model.safetensors"] == (new / "adapter_model.safetensors").read_bytes()
    assert after["checkpoints/run-1/state.pt"] == b"state" and after["notes.txt"] == b"the operator's own file"
    assert json.loads(after["dermground_adapter.json"]) == {"steps": 200}
    assert "adapter_model.bin" not in after and CARRIED_FILE not in after  # old weights are not carried over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging or previous folder left


def test_a_swap_interrupted_while_carrying_the_checkpoints_is_undone_at_the_next_start(adapters, tmp_path):
    """A crash after the new adapter was checked, with the checkpoints already moved next to it: the next
    run moves them back (nothing is lost) and starts from the old adapter."""
    old, new = adapters
    out = _out_with_old_adapter(tmp_path, old)
    before = _contents(out)
    staging = shutil.copytree(new, staging_folder(out))  # the state such a crash leaves on disk
    (staging / CARRIED_FILE).write_text(json.dumps(["checkpoints", "notes.txt"]))
    os.rename(out / "checkpoints", staging / "checkpoints")
    done = recover_interrupted_swap(out)
    assert _contents(out) == before and not staging.exists()
    assert done and "checkpoints" in done[0]


def test_a_diverged_runs_nan_adapter_does_not_replace_the_old_one(adapters, tiny_model_dir, tmp_path):
    """`train --lr 1e12` ended with loss nan and wrote an adapter whose 52,224 weights were all NaN,
    'adapter written to ...', over whatever adapter was there. Now the check refuses non-finite weights,
    says the run diverged and what to change, and the old adapter stays."""
    import torch
    from safetensors.torch import load_file, save_file

    old, new = adapters
    out = _out_with_old_adapter(tmp_path, old)
    before = _contents(out)

    def write_diverged(folder: Path) -> None:
        _writer(new)(folder)
        weights = load_file(folder / "adapter_model.safetensors")
        first = sorted(weights)[0]
        weights[first] = torch.full_like(weights[first], float("nan"))
        save_file(weights, folder / "adapter_model.safetensors", metadata={"format": "pt"})

    with pytest.raises(AdapterNotSavedError, match=rf"1 of its \d+ weight tensors hold NaN.*lower --lr.*{out} is unchanged"):
        swap_in_adapter(out, write_diverged, lambda folder: check_new_adapter(folder, tiny_model_dir))
    assert _contents(out) == before and not staging_folder(out).exists()
    check_new_adapter(new, tiny_model_dir)  # a trained adapter passes
