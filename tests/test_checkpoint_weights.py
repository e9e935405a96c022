"""A checkpoint folder whose weights do not all match the model's names is refused, never run half random."""

from __future__ import annotations

import shutil

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
