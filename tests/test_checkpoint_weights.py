"""Checkpoint folders dermground cannot run as they are: refused with the file and the fix, never run half random."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from dermground.platform.model.loading import BackboneError, load_backbone


def _copy_with_weights(tiny_model_dir, out, rename):
    shutil.copytree(tiny_model_dir, out)
    weights = load_file(out / "model.safetensors")
    renamed = {rename(k): v for k, v in weights.items()}
    save_file({k: v for k, v in renamed.items() if k is not None}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out


def test_a_checkpoint_missing_a_tensor_is_refused(tiny_model_dir, tmp_path):
    # save_pretrained writes the 4.x names (model.layers.*); the model names it model.language_model.layers.*
    dropped = "model.layers.1.mlp.down_proj.weight"
    folder = _copy_with_weights(tiny_model_dir, tmp_path / "missing", lambda k: None if k == dropped else k)
    with pytest.raises(BackboneError, match="1 weights of Qwen2VLForConditionalGeneration are not in the checkpoint"
                       ) as error:
        load_backbone(folder, device="cpu", dtype="float32")
    assert "model.language_model.layers.1.mlp.down_proj.weight" in str(error.value)
    assert "download the checkpoint again" in str(error.value)


def test_a_checkpoint_saved_from_a_wrapper_is_refused_naming_its_prefix(tiny_model_dir, tmp_path):
    folder = _copy_with_weights(tiny_model_dir, tmp_path / "prefixed", lambda k: "module." + k)
    with pytest.raises(BackboneError, match="under other names") as error:
        load_backbone(folder, device="cpu", dtype="float32")
    assert "'module.lm_head.weight'" in str(error.value) and "save_pretrained" in str(error.value)
    load_backbone(tiny_model_dir, device="cpu", dtype="float32")  # the original folder loads


@pytest.mark.parametrize("quantization", [
    {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": True},  # Qwen's -AWQ
    {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},  # Qwen's -GPTQ-Int4
    {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},  # unsloth's -bnb-4bit
])
def test_a_quantized_checkpoint_is_refused_by_check_and_by_load(tiny_model_dir, tmp_path, quantization):
    from click.testing import CliRunner

    from dermground.platform.cli import cli
    from dermground.platform.commands.context import use_settings
    from dermground.platform.model.checkpoint_check import check_checkpoint

    folder = tmp_path / "quantized"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"quantization_config": quantization}))
    report = check_checkpoint(folder)
    assert [p.file for p in report.problems] == ["config.json"]
    assert f"{quantization['quant_method']}-quantized" in report.summary() and "unquantized" in report.summary()
    try:
        result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "info", "--model", str(folder)])
    finally:
        use_settings(None)
    assert result.exit_code == 1 and "unquantized checkpoint" in result.output
    assert not isinstance(result.exception, ImportError)  # before: gptqmodel / optimum / bitsandbytes ImportError


def test_a_git_lfs_pointer_or_a_cut_short_weight_file_fails_the_check_not_the_load(tiny_model_dir, tmp_path):
    from dermground.platform.model.checkpoint_check import check_checkpoint

    lfs = tmp_path / "lfs"  # `git clone` of a hub repo without git-lfs
    shutil.copytree(tiny_model_dir, lfs)
    (lfs / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:"
                                           + "0" * 64 + "\nsize 4411559792\n")
    cut = tmp_path / "cut"  # an interrupted copy
    shutil.copytree(tiny_model_dir, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:len(data) // 2])
    for folder, words in ((lfs, "git lfs pull"), (cut, "is cut short")):
        report = check_checkpoint(folder)
        assert [p.file for p in report.problems] == ["model.safetensors"], report.summary()
        assert words in report.summary()
        with pytest.raises(BackboneError, match="model.safetensors"):  # before: safetensors' SafetensorError
            load_backbone(folder, device="cpu", dtype="float32")
    assert check_checkpoint(tiny_model_dir).ok


def test_the_hub_cache_folder_of_a_repo_points_at_its_snapshot_which_loads(tiny_model_dir, tmp_path):
    # ~/.cache/huggingface/hub/models--Org--Name: files are symlinks from snapshots/<revision>/ into blobs/
    from dermground.platform.model.checkpoint_check import check_checkpoint

    repo = tmp_path / "models--Qwen--Qwen2-VL-2B-Instruct"
    snapshot = repo / "snapshots" / "895c3a49bc3fa70a340399125c650a463535e71c"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, file in enumerate(sorted(tiny_model_dir.iterdir())):
        blob = repo / "blobs" / f"{index:040x}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(blob)
    report = check_checkpoint(repo)
    assert not report.ok and f"point --model at its snapshot folder {snapshot}" in report.summary()
    assert check_checkpoint(snapshot).ok
    assert load_backbone(snapshot, device="cpu", dtype="float32").model_dir == snapshot


def test_a_snapshot_copied_out_of_the_hub_cache_without_its_blobs_is_named_as_such(
        tiny_model_dir, make_tiny_adapter, tmp_path):
    # `cp -r snapshots/<rev> DIR` copies the links into ../../blobs/, which then point nowhere. Before: the
    # model folder "has no config.json, so it is not a Hugging Face checkpoint" (init-tiny hint), the adapter
    # "has no adapter_config.json", and a dangling model.safetensors alone passed `model check`.
    from dermground.platform.model.checkpoint_check import check_checkpoint

    cache = tmp_path / "hub"
    for name, source in (("model", tiny_model_dir), ("adapter", make_tiny_adapter(tiny_model_dir, tmp_path / "a"))):
        snapshot = cache / f"models--Org--{name}" / "snapshots" / "895c3a49bc3fa70a340399125c650a463535e71c"
        snapshot.mkdir(parents=True)
        for index, file in enumerate(sorted(source.iterdir())):
            blob = cache / f"models--Org--{name}" / "blobs" / f"{index:040x}"
            blob.parent.mkdir(exist_ok=True)
            shutil.copy(file, blob)
            (snapshot / file.name).symlink_to(Path("../../blobs") / blob.name)
        shutil.copytree(snapshot, tmp_path / "copied" / name, symlinks=True)  # what `cp -r` does
    copied = tmp_path / "copied"
    report = check_checkpoint(copied / "model")
    assert not report.ok and "symbolic links to files that do not exist" in report.summary()
    assert "config.json" in report.summary() and "cp -rL" in report.summary()
    with pytest.raises(BackboneError, match="symbolic links to files that do not exist"):
        load_backbone(tiny_model_dir, copied / "adapter", device="cpu", dtype="float32")
    only_weights = tmp_path / "only_weights"
    shutil.copytree(tiny_model_dir, only_weights)
    (only_weights / "model.safetensors").unlink()
    (only_weights / "model.safetensors").symlink_to("../blobs/0123")
    assert "model.safetensors: 1 file(s)" in check_checkpoint(only_weights).summary()


def test_torch_pickled_weights_are_checked_like_safetensors(tiny_model_dir, tmp_path):
    # Before: `model check` passed a pytorch_model.bin that was a Git LFS pointer or cut short (and a
    # pytorch_model.bin.index.json whose shard was missing); loading then ended in torch's UnpicklingError traceback.
    import torch

    from dermground.platform.model.checkpoint_check import check_checkpoint

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    assert check_checkpoint(pickled).ok
    assert load_backbone(pickled, device="cpu", dtype="float32").hidden_size == 128
    whole = (pickled / "pytorch_model.bin").read_bytes()
    for damage, reason in ((b"version https://git-lfs.github.com/spec/v1\n", "is a Git LFS pointer"),
                           (whole[:len(whole) // 2], "is cut short or not a torch weight file")):
        (pickled / "pytorch_model.bin").write_bytes(damage)
        assert f"pytorch_model.bin: {reason}" in check_checkpoint(pickled).summary()
        with pytest.raises(BackboneError, match=reason):
            load_backbone(pickled, device="cpu", dtype="float32")
    (pickled / "pytorch_model.bin").rename(pickled / "pytorch_model-00001-of-00002.bin")
    (pickled / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
        "a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}}))
    assert "2 weight shard(s) and 1 are missing (pytorch_model-00002-of-00002.bin)" in check_checkpoint(pickled).summary()
