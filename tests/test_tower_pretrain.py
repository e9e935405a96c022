"""Vision-tower pre-training on local image statistics (train/tower_pretrain.py) on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dermground.platform.attribute_measure import srgb_to_lab
from dermground.train.config import PretrainConfig
from dermground.train.tower_pretrain import STATISTIC_NAMES, TOKEN_PIXELS, TOWER_METADATA_FILE, region_statistics


def _column(name: str) -> int:
    return STATISTIC_NAMES.index(name)


def test_region_statistics_of_flat_and_split_regions_in_token_order():
    rgb = np.full((2 * TOKEN_PIXELS, 3 * TOKEN_PIXELS, 3), (200, 150, 120), dtype=np.uint8)
    rgb[:TOKEN_PIXELS, 2 * TOKEN_PIXELS:] = (40, 30, 20)  # token (row 0, col 2): dark and flat
    rgb[TOKEN_PIXELS:, :TOKEN_PIXELS // 2] = (0, 0, 0)  # token (row 1, col 0): left half black
    stats = region_statistics(rgb)
    assert stats.shape == (6, len(STATISTIC_NAMES))

    skin, dark = srgb_to_lab(np.array([[200, 150, 120]], np.uint8))[0], srgb_to_lab(np.array([[40, 30, 20]], np.uint8))[0]
    for token in (0, 1, 4, 5):
        np.testing.assert_allclose(stats[token, :3], skin, atol=1e-3)
    np.testing.assert_allclose(stats[2, :3], dark, atol=1e-3)  # row-major: the third token of the first row
    flat = [0, 1, 2, 4, 5]
    assert np.abs(stats[flat, _column("std_L")]).max() < 1e-3
    # half black: the L* spread of a 50/50 two-level region is half the level difference
    assert stats[3, _column("std_L")] == pytest.approx(skin[0] / 2, abs=1e-3)
    quarters = stats[3, [_column(f"mean_L_q{q}") for q in range(4)]]
    np.testing.assert_allclose(quarters, [0.0, skin[0], 0.0, skin[0]], atol=1e-3)  # left quarters black
    # the brightness gradient is zero inside flat regions and large at the step inside token 3
    assert stats[flat][:, _column("grad_L_q0")].max() < stats[3, _column("grad_L_q1")]
    assert stats[4, _column("grad_L_q1")] == pytest.approx(0.0, abs=1e-3)  # no edge in or next to it


def test_region_statistics_refuses_sizes_off_the_token_grid():
    with pytest.raises(ValueError, match="multiples of 28"):
        region_statistics(np.zeros((30, 56, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="multiples of 28"):
        region_statistics(np.zeros((56, 56), dtype=np.uint8))


def test_merged_token_k_holds_the_patches_of_region_k(tiny_backbone):
    """The targets are in row-major token order; the processor must order the patch rows the same way."""
    processor = tiny_backbone.processor.image_processor
    grid = processor(images=[Image.new("RGB", (64, 64))], return_tensors="pt")["image_grid_thw"][0]
    side = int(grid[1]) * int(processor.patch_size)  # the tiny model's fixed input size
    rows = side // TOKEN_PIXELS
    for token in (1, rows + 2):
        rgb = np.zeros((side, side, 3), dtype=np.uint8)
        r, c = divmod(token, rows)
        rgb[r * TOKEN_PIXELS:(r + 1) * TOKEN_PIXELS, c * TOKEN_PIXELS:(c + 1) * TOKEN_PIXELS] = 255
        encoded = processor(images=[Image.fromarray(rgb)], return_tensors="pt")
        bright = encoded["pixel_values"].mean(dim=1) > 0  # the merger joins 4 consecutive patch rows
        assert bright.nonzero().flatten().tolist() == [4 * token + i for i in range(4)]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from dermground.ingest.synth import generate_dataset

    out = tmp_path_factory.mktemp("tower") / "data"
    generate_dataset(out, patients=6, images=24, seed=5, size=64, progress=False, workers=1)
    return out


def test_tower_pretraining_trains_the_tower_only_and_writes_a_loadable_model(small_data, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from dermground.platform.model.loading import load_backbone
    from dermground.train.tower_pretrain import pretrain_tower

    out = tmp_path / "tower"
    meta = pretrain_tower(small_data, tiny_model_dir, out, PretrainConfig(tower_steps=40, batch_size=8, lr=3e-3, seed=1),
                          progress=False)
    curve = [loss for _, loss in meta["loss_curve"]]
    assert curve[-1] < 0.7 * curve[0]  # standardised targets: 1.0 would be predicting the mean
    assert json.loads((out / TOWER_METADATA_FILE).read_text())["fingerprint"] == meta["fingerprint"]

    old, new = load_file(next(tiny_model_dir.glob("*.safetensors"))), load_file(next(out.glob("*.safetensors")))
    assert set(old) == set(new)
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith("visual.") or ".visual." in k for k in changed)  # decoder, embeddings and lm_head untouched
    assert any("merger" in k for k in changed) and any("patch_embed" in k for k in changed)
    backbone = load_backbone(out, device="cpu", dtype="float32")
    assert backbone.fingerprint == meta["fingerprint"]
    with pytest.raises(ValueError, match="must differ"):
        pretrain_tower(small_data, out, out, PretrainConfig(tower_steps=1), progress=False)
    with pytest.raises(ValueError, match="--tower-steps"):
        pretrain_tower(small_data, tiny_model_dir, tmp_path / "none", PretrainConfig(tower_steps=0), progress=False)


def test_pretrain_runs_the_tower_stage_first_and_reuses_it_on_a_rerun(ray_session, small_data, tiny_model_dir,
                                                                        tmp_path):
    from dermground.train.pretrain import pretrain_base

    out = tmp_path / "pretrained"
    run = dict(progress=False, cpus_per_worker=2)
    meta = pretrain_base(small_data, tiny_model_dir, out, PretrainConfig(batch_size=4, tower_steps=6, max_steps=2), **run)
    assert meta["tower"]["hyperparameters"]["steps"] == 6 and meta["hyperparameters"]["tower_steps"] == 6
    marker = out.parent / ".pretrained.pretrain" / "tower" / TOWER_METADATA_FILE
    from safetensors.torch import load_file

    tower, final = load_file(next(marker.parent.glob("*.safetensors"))), load_file(next(out.glob("*.safetensors")))
    vision = [k for k in tower if k.startswith("visual.") or ".visual." in k]
    assert vision and all(torch.equal(tower[k], final[k]) for k in vision)  # the question stage leaves the tower
    assert any(not torch.equal(tower[k], final[k]) for k in tower if k not in vision)  # and trains the rest
    written = marker.stat().st_mtime_ns
    again = pretrain_base(small_data, tiny_model_dir, out, PretrainConfig(batch_size=4, tower_steps=6, max_steps=3), **run)
    assert marker.stat().st_mtime_ns == written  # the finished tower stage is reused, not redone
    assert again["tower"]["fingerprint"] == meta["tower"]["fingerprint"]
    assert again["steps"] == 3
    plain = pretrain_base(small_data, tiny_model_dir, tmp_path / "plain", PretrainConfig(max_steps=2, batch_size=4), **run)
    assert plain["tower"] is None and "tower_steps" not in plain["hyperparameters"]


def test_tower_pretraining_of_a_sharded_hub_checkpoint_writes_a_loadable_model(small_data, hub_checkpoints, tmp_path):
    # A hub download keeps its weights in shards listed by model.safetensors.index.json; the new model is saved
    # afresh, so the base's index must not be copied next to it (it would name shards the output lacks).
    from dermground.platform.model.loading import load_backbone
    from dermground.train.tower_pretrain import pretrain_tower

    base = hub_checkpoints("qwen2_vl")
    assert (base / "model.safetensors.index.json").is_file()
    out = tmp_path / "tower"
    meta = pretrain_tower(small_data, base, out, PretrainConfig(tower_steps=1, batch_size=4, max_images=4, seed=1),
                          progress=False)
    assert not (out / "model.safetensors.index.json").exists() or all(
        (out / shard).is_file() for shard in json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].values())
    assert load_backbone(out, device="cpu", dtype="float32").fingerprint == meta["fingerprint"]


def test_the_tower_marker_is_written_whole_and_a_cut_short_one_reads_as_not_finished(tmp_path):
    """A kill or a full disk while the marker was written in place left it cut short, and the next
    `pretrain` stopped with a JSON error. It is now renamed into place whole; one that cannot be read
    says the stage did not finish."""
    from dermground.train.tower_pretrain import read_tower_marker, write_tower_marker

    record = {"hyperparameters": {"steps": 6}, "statistics": list(STATISTIC_NAMES), "from_fingerprint": "a",
              "fingerprint": "b"}
    write_tower_marker(tmp_path, record)
    assert [p.name for p in tmp_path.iterdir()] == [TOWER_METADATA_FILE]  # no temporary file left
    assert read_tower_marker(tmp_path / TOWER_METADATA_FILE) == (record, "")
    text = (tmp_path / TOWER_METADATA_FILE).read_text()
    (tmp_path / TOWER_METADATA_FILE).write_text(text[: len(text) // 2])  # what a kill mid-write left before
    done, why = read_tower_marker(tmp_path / TOWER_METADATA_FILE)
    assert done is None and "JSONDecodeError" in why
    (tmp_path / TOWER_METADATA_FILE).write_text("[]")
    assert read_tower_marker(tmp_path / TOWER_METADATA_FILE)[0] is None
    assert read_tower_marker(tmp_path / "absent.json") == (None, "missing")


def test_pretrain_runs_the_tower_stage_again_after_a_cut_short_marker(small_data, tiny_model_dir, tmp_path, capsys):
    """The tower stage alone (it runs in this process, no Ray): a cut-short marker is redone, said once."""
    from dermground.train.pretrain import _tower_stage

    tower_dir = tmp_path / ".pretrained.pretrain" / "tower"
    tower_dir.mkdir(parents=True)
    (tower_dir / TOWER_METADATA_FILE).write_text('{"what": "vision-tower pre-tr')
    config = PretrainConfig(batch_size=4, tower_steps=1, max_images=4)
    done = _tower_stage(small_data, tiny_model_dir, tower_dir, config, progress=False)
    assert done["hyperparameters"]["steps"] == 1
    assert json.loads((tower_dir / TOWER_METADATA_FILE).read_text())["fingerprint"] == done["fingerprint"]
    said = capsys.readouterr().err
    assert said.count("cannot be read") == 1 and "running the vision-tower stage again" in said
