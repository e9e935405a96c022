"""Checkpoint folders as users have them beside the hub fixture's clean layout: templates kept where newer
transformers keep them, stale files beside the weights, and other leftovers of downloads and re-saves.

The folders are the session's hub-like checkpoint (`hub_checkpoints`) with every file linked, not copied,
except the one a test changes.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dermground.platform.cli import cli
from dermground.platform.model.hub_layout import QWEN_VL_CHAT_TEMPLATE


@pytest.fixture(scope="module")
def hub_dir(hub_checkpoints):
    return hub_checkpoints("qwen2_vl")


def linked_copy(source, out, *changed):
    """`out` with a link to every file of `source`, except `changed` (copied, for the test to edit)."""
    import shutil

    out.mkdir()
    for item in source.iterdir():
        if item.name in changed:
            shutil.copy(item, out / item.name)
        else:
            (out / item.name).symlink_to(item)
    return out


def test_a_chat_template_kept_only_in_chat_template_json_stays_with_the_processor(hub_dir, tmp_path):
    # Before: the tokenizer does not read chat_template.json, so the processor had no template and a
    # processor saved from it (pretrain's new model folder) had none either; model check said nothing.
    from dermground.platform.model.loading import load_processor

    folder = linked_copy(hub_dir, tmp_path / "newer-layout", "tokenizer_config.json")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    processor = load_processor(folder)
    assert processor.chat_template == QWEN_VL_CHAT_TEMPLATE
    processor.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "chat_template.jinja").read_text() == QWEN_VL_CHAT_TEMPLATE
    check = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "check", str(folder)])
    assert check.exit_code == 0, check.output
    assert "template     chat_template.json, the same prompt dermground writes" in check.output


def _single_file_beside_the_shards(hub_dir, out, change):
    """The hub folder plus model.safetensors holding the shards' tensors, `change`d."""
    from safetensors.torch import load_file, save_file

    folder = linked_copy(hub_dir, out)
    tensors = {k: v for shard in sorted(hub_dir.glob("model-*.safetensors")) for k, v in load_file(shard).items()}
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_a_stale_single_weight_file_beside_the_shards_is_refused(hub_dir, tmp_path):
    # Before: model check passed and transformers loaded model.safetensors alone, ignoring the shards.
    from dermground.platform.model.checkpoint_check import check_checkpoint
    from dermground.platform.model.loading import BackboneError, load_backbone

    def older_weights(tensors):
        tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1

    stale = _single_file_beside_the_shards(hub_dir, tmp_path / "stale", older_weights)
    report = check_checkpoint(stale)
    assert [p.file for p in report.problems] == ["model.safetensors"], report.summary()
    assert ("holds model.safetensors beside model.safetensors.index.json and its 2 shard(s) with other weights"
            in report.summary())
    assert "transformers loads model.safetensors alone" in report.summary()
    assert "move the stale one out of the folder" in report.problems[0].fix
    with pytest.raises(BackboneError, match="ignores the shards"):
        load_backbone(stale, device="cpu", dtype="float32")
    # The same weights twice (saved once whole, once sharded) are no problem: whichever loads.
    same = _single_file_beside_the_shards(hub_dir, tmp_path / "same", lambda tensors: None)
    assert check_checkpoint(same).ok


def test_pixel_limits_saved_as_size_min_and_max_pixels_are_read_as_such(hub_dir, tmp_path):
    # Before: `model check` died with a TypeError traceback and loading said "`size` dict must contain
    # 'shortest_edge' and 'longest_edge' keys": the keys transformers 4.45-4.48 saved, as many fine-tunes have them.
    from PIL import Image

    from dermground.platform.model.loading import load_processor

    folder = linked_copy(hub_dir, tmp_path / "saved-by-4.47", "preprocessor_config.json")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config = {k: v for k, v in config.items() if k not in ("min_pixels", "max_pixels")}
    (folder / "preprocessor_config.json").write_text(json.dumps(config | {"size": {"min_pixels": 3136,
                                                                                   "max_pixels": 50176}}))
    check = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "check", str(folder)])
    assert check.exit_code == 0, check.output
    assert "image pixels 3136..50176 (patch 14, merge 2)" in check.output
    grid = load_processor(folder).image_processor(images=[Image.new("RGB", (600, 450))])["image_grid_thw"]
    assert grid.tolist() == [[1, 12, 18]]  # 50,176 px at most: 168 x 252


@pytest.mark.parametrize("limits", [{"min_pixels": 0}, {"max_pixels": "50176"}], ids=["zero", "string"])
def test_pixel_limits_that_fail_every_image_are_refused_by_the_check(hub_dir, tmp_path, limits):
    # Before: the check passed, and the processor then failed on every image ("size dict must contain
    # 'shortest_edge'" for 0, a TypeError comparing int and str for the string).
    from PIL import Image

    from dermground.platform.model.checkpoint_check import check_checkpoint
    from dermground.platform.model.processor import load_image_processor

    folder = linked_copy(hub_dir, tmp_path / "odd", "preprocessor_config.json")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps(config | limits))
    with pytest.raises((ValueError, TypeError)):  # what the check spares the user: every image fails
        load_image_processor(folder)(images=[Image.new("RGB", (112, 112))])
    report = check_checkpoint(folder, crop_sizes=[(112, 112)])
    (key, value), = limits.items()
    assert [str(p) for p in report.problems] == [
        f"preprocessor_config.json: {key} is {value!r}, not a number of pixels (a whole number, 1 or more); set "
        "min_pixels and max_pixels to numbers (Qwen2-VL publishes 3136 and 12845056)"]


def test_model_check_data_that_is_no_data_folder_is_a_clear_error(hub_dir, tmp_path):
    # Before: a FileNotFoundError traceback out of sample_crop_sizes.
    (tmp_path / "photos").mkdir()
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "check", str(hub_dir), "--data",
                                      str(tmp_path / "photos")])
    assert result.exit_code == 1 and not isinstance(result.exception, FileNotFoundError), result.exception
    assert f"Error: --data {tmp_path / 'photos'}: {tmp_path / 'photos' / 'train-metadata.csv'} not found; point at " \
           f"an ISIC 2024 data folder or run `dermground --home {tmp_path / 'home'} synth --out DIR`" in result.output


def test_an_adapter_inside_the_model_folder_is_refused(hub_dir, make_tiny_adapter, tmp_path):
    # Before: the check passed and transformers applied the adapter whenever the folder loaded (peft is
    # installed): --model carried an adapter nobody passed, unchecked, and twice with --adapter.
    from dermground.platform.model.checkpoint_check import check_checkpoint
    from dermground.platform.model.loading import BackboneError, load_backbone

    adapter = make_tiny_adapter(hub_dir, tmp_path / "adapter")
    folder = linked_copy(hub_dir, tmp_path / "model-and-adapter")
    for item in adapter.iterdir():
        (folder / item.name).symlink_to(item)
    report = check_checkpoint(folder)
    assert [p.file for p in report.problems] == ["adapter_config.json"], report.summary()
    assert "transformers applies it whenever the folder is loaded" in report.summary()
    assert "move the adapter's files (adapter_config.json, adapter_model.*) to a folder of their own" in report.summary()
    with pytest.raises(BackboneError, match="holds a LoRA adapter"):
        load_backbone(folder, device="cpu", dtype="float32")


def test_shards_without_their_index_are_an_incomplete_download(hub_dir, tmp_path):
    # Before: the check passed, and loading failed with "no file named model.safetensors, or pytorch_model.bin".
    from dermground.platform.model.checkpoint_check import check_checkpoint

    folder = linked_copy(hub_dir, tmp_path / "interrupted")
    (folder / "model.safetensors.index.json").unlink()
    problems = check_checkpoint(folder).problems
    assert [p.file for p in problems] == ["model.safetensors.index.json"]
    assert str(problems[0]) == (
        f"model.safetensors.index.json: {folder} has weight files (model-00001-of-00002.safetensors, "
        "model-00002-of-00002.safetensors) but no model.safetensors and no shard index (model.safetensors.index.json) "
        "that transformers loads them by; the download is incomplete; fetch model.safetensors.index.json too, or "
        "download the checkpoint again (e.g. `huggingface-cli download Qwen/Qwen2-VL-2B-Instruct --local-dir DIR`)")
