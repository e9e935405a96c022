"""`pretrain --out` is replaced whole: a crash while the new model is saved leaves the old model intact."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from dermground.platform.crash_points import KILL_ENV


@pytest.fixture(scope="module")
def pretrain_data(tmp_path_factory):
    from dermground.ingest.synth import generate_dataset

    out = tmp_path_factory.mktemp("pretrain_swap") / "data"
    generate_dataset(out, patients=4, images=8, seed=11, size=64, progress=False, workers=1)
    return out


def _earlier_pretrain_output(tiny_model_dir, out) -> str:
    """A model folder as an earlier pretrain leaves it (the model and dermground_pretrain.json); its fingerprint."""
    from dermground.platform.model.fingerprint import fingerprint

    shutil.copytree(tiny_model_dir, out)
    (out / "dermground_pretrain.json").write_text(json.dumps({"fingerprint": fingerprint(out)}))
    return fingerprint(out)


def test_a_pretrain_killed_while_saving_leaves_the_old_model_whole(ray_session, pretrain_data, tiny_model_dir,
                                                                   tmp_path):
    """pretrain copied the new model over --out file by file: killed half-way, --out held new weights beside
    the old config and tokenizer, a model nobody trained. Now the new model is staged next to --out, checked,
    and swapped in by a rename; a kill while it is written leaves the old model as it was, and the next
    pretrain into the same --out removes the half-written staging folder before it starts."""
    from dermground.platform.model.checkpoint_check import check_checkpoint
    from dermground.platform.model.fingerprint import fingerprint
    from dermground.train.model_swap import require_replaceable_out

    out = tmp_path / "pretrained"
    old = _earlier_pretrain_output(tiny_model_dir, out)
    before = sorted(p.name for p in out.iterdir())
    env = {**os.environ, KILL_ENV: "pretrain_half_copied", "DERMGROUND_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "dermground", "pretrain", "--data", str(pretrain_data), "--base",
               str(tiny_model_dir), "--out", str(out), "--max-steps", "1", "--batch-size", "4",
               "--questions-per-image", "1", "--ray-address", ray_session.get_runtime_context().gcs_address]
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert sorted(p.name for p in out.iterdir()) == before
    assert fingerprint(out) == old and check_checkpoint(out).ok  # the old model, whole
    staging = tmp_path / ".pretrained.staging"
    assert staging.is_dir() and 0 < len(list(staging.iterdir())) < len(before)  # the new model, half written

    assert require_replaceable_out(out) == []  # what the next pretrain runs first: an unfinished staging goes
    assert not staging.exists() and fingerprint(out) == old


def test_an_out_holding_other_files_is_refused_before_any_work(pretrain_data, tiny_model_dir, tmp_path):
    """The new model replaces --out whole: files pretrain did not write there would go with the old folder."""
    from dermground.platform.out_folder import OutFolderError
    from dermground.train.config import PretrainConfig
    from dermground.train.pretrain import pretrain_base

    out = tmp_path / "notes"
    out.mkdir()
    (out / "results.csv").write_text("a,b\n")
    with pytest.raises(OutFolderError, match=r"--out .*notes holds files pretrain did not write \(results.csv"):
        pretrain_base(pretrain_data, tiny_model_dir, out, PretrainConfig(max_steps=1), progress=False)
    assert [p.name for p in out.iterdir()] == ["results.csv"]
    assert not (tmp_path / ".notes.pretrain").exists()  # refused before the image checks and Ray
