"""The model contract on both families (Qwen2-VL and Qwen2.5-VL): loading, LoRA, prediction.

Shared-prefix vectors against the naive 17 passes run on both families in test_hub_checkpoint.py
(with Qwen's own tokenizer) and on the tiny Qwen2-VL in test_embed.py.

The tiny Qwen2.5-VL runs windowed vision attention even at 112 px (56 px windows, full attention in
the last block only), so its window reordering is exercised, not bypassed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from transformers import AutoProcessor

from dermground.platform.attributes import get_attribute
from dermground.platform.cli import cli
from dermground.platform.commands.context import use_settings
from dermground.platform.model.families import FAMILIES
from dermground.platform.model.loading import load_backbone
from dermground.platform.model.prompts import build_prompt
from dermground.platform.predict import predict_attributes

FAMILY_NAMES = tuple(FAMILIES)


@pytest.fixture(scope="module")
def family_dirs(tiny_model_dir, tmp_path_factory):
    """The session's tiny Qwen2-VL and a tiny Qwen2.5-VL made with `model init-tiny --family`."""
    out = tmp_path_factory.mktemp("families") / "qwen2_5_vl"
    try:
        result = CliRunner().invoke(cli, ["--home", str(out.parent / "home"), "model", "init-tiny", "--family",
                                          "qwen2_5_vl", "--image-size", "112", "--out", str(out)])
    finally:
        use_settings(None)
    assert result.exit_code == 0, result.output
    return {"qwen2_vl": tiny_model_dir, "qwen2_5_vl": out}


@pytest.fixture(scope="module")
def backbones(family_dirs):
    return {family: load_backbone(path, device="cpu", dtype="float32") for family, path in family_dirs.items()}


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (84, 140, 3), dtype=np.uint8))]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_loads_through_the_normal_path(family, family_dirs, backbones):
    backbone = backbones[family]
    assert backbone.core.config.model_type == family
    assert isinstance(backbone.core, FAMILIES[family].model_class)
    assert isinstance(backbone.processor, FAMILIES[family].processor_class)
    assert isinstance(AutoProcessor.from_pretrained(family_dirs[family], local_files_only=True),
                      FAMILIES[family].processor_class)
    assert backbone.hidden_size == 128 and not backbone.model.training
    if family == "qwen2_5_vl":
        vision = backbone.core.config.vision_config
        assert vision.window_size == 56 and list(vision.fullatt_block_indexes) == [vision.depth - 1]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_greedy_answers_equal_hugging_face_generate(family, backbones, images):
    backbone = backbones[family]
    names = ["areaMM2", "deltaB"]
    predictions = predict_attributes(backbone, images, attributes=names, max_new_tokens=5, batch_size=2)
    for i, image in enumerate(images):
        for name in names:
            inputs = backbone.processor(text=[build_prompt(get_attribute(name).question)], images=[image],
                                        return_tensors="pt")
            output = backbone.model.generate(**inputs, max_new_tokens=5, do_sample=False)
            expected = backbone.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:],
                                                 skip_special_tokens=True).strip()
            assert predictions[i][name].raw == expected, (family, i, name)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lora_targets_the_vision_blocks_and_decoder_and_trains(family, family_dirs, images, tmp_path):
    from dermground.train.collator import AnswerOnlyCollator
    from dermground.train.lora import apply_lora

    backbone = load_backbone(family_dirs[family], device="cpu", dtype="float32", for_training=True)
    model = apply_lora(backbone.core, rank=4, alpha=8, dropout=0.0)
    wrapped = sorted({n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n})
    mlp = ("fc1", "fc2") if family == "qwen2_vl" else ("gate_proj", "up_proj", "down_proj")
    for block in range(backbone.core.config.vision_config.depth):
        for layer in ("attn.qkv", "attn.proj", *(f"mlp.{m}" for m in mlp)):
            assert any(n.endswith(f"visual.blocks.{block}.{layer}") for n in wrapped), (family, block, layer)
    assert any(n.endswith("merger.mlp.0") for n in wrapped) and any("language_model.layers.1.mlp.down_proj" in n
                                                                    for n in wrapped)
    assert not any("patch_embed" in n or "lm_head" in n for n in wrapped)
    collate = AnswerOnlyCollator(backbone.processor)
    batch = collate([(images[0], get_attribute("areaMM2").question, "12.34"),
                     (images[1], get_attribute("deltaB").question, "-3.5")])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(2):
        optimizer.zero_grad()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] is not None
    tuned = load_backbone(family_dirs[family], tmp_path / "adapter", device="cpu", dtype="float32")
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
        assert torch.allclose(tuned.model(**batch).logits, expected, atol=1e-4)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_model_check_accepts_the_tiny_model_of_each_family(family, family_dirs, tmp_path):
    try:
        result = CliRunner().invoke(cli, ["--home", str(tmp_path), "model", "check", str(family_dirs[family])])
    finally:
        use_settings(None)
    assert result.exit_code == 0, result.output
    assert FAMILIES[family].label in result.output and "can be used" in result.output
