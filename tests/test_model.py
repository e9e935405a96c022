"""Backbone loading, the tiny model factory, prompts and fingerprints."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.model.fingerprint import fingerprint
from dermground.platform.model.loading import BackboneError, load_backbone
from dermground.platform.model.processor import ImageOnlyQwen2VLProcessor
from dermground.platform.model.prompts import (
    PROMPT_VERSION,
    build_prompt,
    build_training_text,
    image_prefix,
    question_suffix,
)
from dermground.platform.model.tiny import save_tiny_model


def test_tiny_model_loads_through_the_normal_path(tiny_backbone, tiny_model_dir):
    assert isinstance(tiny_backbone.model, Qwen2VLForConditionalGeneration)
    assert not tiny_backbone.model.training
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    assert isinstance(tiny_backbone.processor, ImageOnlyQwen2VLProcessor)
    assert tiny_backbone.tokenizer.padding_side == "left"
    assert tiny_backbone.hidden_size == 128
    assert (tiny_backbone.device.type, tiny_backbone.dtype) == ("cpu", torch.float32)
    assert tiny_backbone.fingerprint == fingerprint(tiny_model_dir)


def test_autoprocessor_returns_the_image_only_processor(tiny_model_dir):
    # The registration trap: without it AutoProcessor silently returns only the tokenizer.
    processor = AutoProcessor.from_pretrained(tiny_model_dir, local_files_only=True)
    assert isinstance(processor, ImageOnlyQwen2VLProcessor)


def test_same_seed_same_model_other_seed_other_model(tmp_path):
    a = save_tiny_model(tmp_path / "a", seed=3)
    b = save_tiny_model(tmp_path / "b", seed=3)
    c = save_tiny_model(tmp_path / "c", seed=4)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)


def test_small_preset_builds_with_the_documented_sizes(tmp_path):
    path = save_tiny_model(tmp_path / "small", preset="small")
    config = json.loads((path / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 512
    assert config["text_config"]["num_hidden_layers"] == 4
    assert config["vision_config"]["depth"] == 4
    assert config["vision_config"]["embed_dim"] == 256


def test_missing_or_wrong_directories_raise_clear_errors(tmp_path, tiny_model_dir):
    with pytest.raises(BackboneError, match="init-tiny"):
        load_backbone(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="config.json"):
        load_backbone(tmp_path / "empty")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(BackboneError, match="'bert'"):
        load_backbone(tmp_path / "bert")
    (tmp_path / "no_weights").mkdir()
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "no_weights")
    with pytest.raises(BackboneError, match="no weights"):
        load_backbone(tmp_path / "no_weights")
    (tmp_path / "not_an_adapter").mkdir()
    with pytest.raises(BackboneError, match="adapter_config.json"):
        load_backbone(tiny_model_dir, adapter_dir=tmp_path / "not_an_adapter")


def test_prompt_equals_the_chat_template_and_splits_at_the_image(tiny_backbone):
    tokenizer = tiny_backbone.tokenizer
    for attribute in ATTRIBUTES:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": attribute.question}]}]
        templated = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert templated == build_prompt(attribute.question)
        # KV reuse is exact only if tokenising prefix and suffix separately equals the whole.
        whole = tokenizer(build_prompt(attribute.question), add_special_tokens=False)["input_ids"]
        parts = tokenizer(image_prefix(), add_special_tokens=False)["input_ids"] + tokenizer(
            question_suffix(attribute.question), add_special_tokens=False)["input_ids"]
        assert whole == parts
    assert image_prefix().endswith("<|vision_end|>")
    assert build_prompt("Q?").endswith("<|im_start|>assistant\n")
    assert build_training_text("Q?", "12.34") == build_prompt("Q?") + "12.34<|im_end|>"
    assert tokenizer.tokenize("12.34") == ["1", "2", ".", "3", "4"]


def test_fingerprint_changes_with_adapter_and_prompt_version(tmp_path, tiny_model_dir, make_tiny_adapter):
    adapter = make_tiny_adapter(tiny_model_dir, tmp_path / "adapter")
    other_adapter = make_tiny_adapter(tiny_model_dir, tmp_path / "adapter2", seed=1)
    base = fingerprint(tiny_model_dir)
    assert base == fingerprint(tiny_model_dir)  # stable
    assert fingerprint(tiny_model_dir, adapter) != base
    assert fingerprint(tiny_model_dir, adapter) != fingerprint(tiny_model_dir, other_adapter)
    assert fingerprint(tiny_model_dir, prompt_version=PROMPT_VERSION + "-changed") != base
    backbone = load_backbone(tiny_model_dir, adapter_dir=adapter, device="cpu")
    assert backbone.fingerprint == fingerprint(tiny_model_dir, adapter)
    assert backbone.adapter_dir == adapter


def test_without_tokenizer_json_the_slow_tokenizer_files_are_part_of_the_fingerprint(tmp_path, tiny_model_dir):
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    with_fast = fingerprint(folder)
    (folder / "vocab.json").write_text('{"a": 0}')
    (folder / "merges.txt").write_text("#version: 0.2\n")
    assert fingerprint(folder) == with_fast  # tokenizer.json defines tokenisation: the others do not count
    (folder / "tokenizer.json").unlink()
    slow = fingerprint(folder)
    assert slow != with_fast
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    assert fingerprint(folder) != slow  # another merge table, another model


def test_for_training_leaves_the_adapter_trainable(tmp_path, tiny_model_dir, make_tiny_adapter):
    adapter = make_tiny_adapter(tiny_model_dir, tmp_path / "adapter")
    backbone = load_backbone(tiny_model_dir, adapter_dir=adapter, device="cpu", for_training=True)
    assert backbone.model.training
    trainable = [n for n, p in backbone.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_torchvision_is_not_installed():
    # Its only wheels for this torch are CUDA builds that break transformers at import.
    assert importlib.util.find_spec("torchvision") is None


@pytest.mark.parametrize("size", ["0", "-28"])
def test_init_tiny_refuses_an_image_size_below_28(tmp_path, size):
    # Before: 0 was taken as "the preset's" (224 px) and -28 built a 28 px model, both without a word.
    from click.testing import CliRunner

    from dermground.platform.cli import cli

    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "init-tiny", "--out",
                                      str(tmp_path / "m"), "--image-size", size])
    assert result.exit_code == 1 and not (tmp_path / "m" / "config.json").exists()
    assert f"image_size must be a positive multiple of 28 (patch 14 x merge 2), got {size}" in result.output


def test_init_tiny_under_a_file_is_a_clear_error_naming_out(tmp_path):
    # Before: a NotADirectoryError traceback out of pathlib's mkdir.
    from click.testing import CliRunner

    from dermground.platform.cli import cli

    (tmp_path / "afile").write_text("not a folder")
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "init-tiny", "--out",
                                      str(tmp_path / "afile" / "m")])
    assert result.exit_code == 1 and not isinstance(result.exception, NotADirectoryError), result.exception
    assert f"--out {tmp_path / 'afile' / 'm'}: cannot write the model there (Not a directory)" in result.output
    assert (tmp_path / "afile").read_text() == "not a folder"
