"""LoRA adapters trained elsewhere with peft: the layouts users bring, loaded through `load_backbone`.

An adapter whose weight names do not match the model's modules must never load as a silent no-op.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dermground.platform.model.loading import BackboneError, load_backbone

IDS = torch.tensor([[1, 12, 13, 14, 15, 16, 17, 18]])  # text only: the decoder's LoRA layers decide


def _logits(model_dir, adapter_dir=None) -> torch.Tensor:
    backbone = load_backbone(model_dir, adapter_dir, device="cpu", dtype="float32")
    with torch.no_grad():
        return backbone.model(input_ids=IDS).logits[0, -1]


def _save_adapter(module: torch.nn.Module, out, seed: int = 0, **fields):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    # A name list, as most trainers write it (LLaMA-Factory, the peft docs): it matches on v4 and v5 names alike.
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj", "qkv", "fc1"],
                        **fields)
    get_peft_model(module, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def v5_adapter(tiny_model_dir, tmp_path_factory):
    from transformers import Qwen2VLForConditionalGeneration

    base = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, local_files_only=True)
    return _save_adapter(base, tmp_path_factory.mktemp("adapters") / "v5")


def _v4_copy(v5_adapter, out, target_modules=None, **fields):
    """The adapter as transformers 4.x saved it: base_model.model.model.layers.* and base_model.model.visual.*"""
    weights = load_file(v5_adapter / "adapter_model.safetensors")
    v4 = {k.replace("base_model.model.model.language_model.", "base_model.model.model.")
          .replace("base_model.model.model.visual.", "base_model.model.visual."): v for k, v in weights.items()}
    assert any(k.startswith("base_model.model.visual.blocks.") for k in v4)
    assert any(k.startswith("base_model.model.model.layers.") for k in v4)
    out.mkdir()
    config = json.loads((v5_adapter / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(config | ({"target_modules": target_modules}
                                                                  if target_modules else {}) | fields))
    save_file(v4, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


def test_an_adapter_saved_with_transformers_4_names_applies_like_the_same_adapter_in_v5_names(
        tiny_model_dir, v5_adapter, tmp_path):
    v4_adapter = _v4_copy(v5_adapter, tmp_path / "v4")
    expected = _logits(tiny_model_dir, v5_adapter)
    assert not torch.allclose(expected, _logits(tiny_model_dir), atol=1e-3)  # the adapter matters
    torch.testing.assert_close(_logits(tiny_model_dir, v4_adapter), expected, rtol=0, atol=1e-6)


def test_a_transformers_4_adapter_listing_full_module_paths_applies_to_the_same_modules(
        tiny_model_dir, v5_adapter, tmp_path):
    # A target list is matched as name suffixes; model.layers.0.self_attn.q_proj is no suffix of the v5 name
    # model.language_model.layers.0.self_attn.q_proj, so those layers got no LoRA and their weights were dropped.
    paths = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    paths += [f"visual.blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "mlp.fc1")]
    v4_adapter = _v4_copy(v5_adapter, tmp_path / "v4_paths", target_modules=paths)
    torch.testing.assert_close(_logits(tiny_model_dir, v4_adapter), _logits(tiny_model_dir, v5_adapter),
                               rtol=0, atol=1e-6)


def test_an_adapter_saved_from_a_sub_module_is_refused_not_ignored(tiny_model_dir, tmp_path):
    from transformers import Qwen2VLForConditionalGeneration

    base = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, local_files_only=True)
    inner = _save_adapter(base.model.language_model, tmp_path / "inner")  # keys base_model.model.layers.*
    with pytest.raises(BackboneError, match="sub-module") as error:
        load_backbone(tiny_model_dir, inner, device="cpu", dtype="float32")
    assert "base_model.model.layers.0.self_attn.q_proj.lora_A.weight" in str(error.value)


def test_a_transformers_4_adapter_with_a_regex_target_gets_lora_layers_only_where_it_was_trained(tmp_path):
    # ms-swift writes target_modules as a regex over the 4.x names, where the decoder was model.* and the vision
    # tower visual.*; on v5 names it would also match Qwen2.5-VL's vision MLP (model.visual.*.gate_proj ...).
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    from dermground.platform.model.tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "qwen25", seed=0, family="qwen2_5_vl")
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, local_files_only=True)
    torch.manual_seed(0)
    v5_regex = r"^(model\.language_model(?=\.).*\.(k_proj|up_proj|v_proj|down_proj|gate_proj|o_proj|q_proj))$"
    v5_adapter = tmp_path / "v5"
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                    target_modules=v5_regex)).save_pretrained(v5_adapter)
    v4_adapter = tmp_path / "v4"
    v4_adapter.mkdir()
    weights = load_file(v5_adapter / "adapter_model.safetensors")
    save_file({k.replace("base_model.model.model.language_model.", "base_model.model.model."): v
               for k, v in weights.items()}, str(v4_adapter / "adapter_model.safetensors"))
    config = json.loads((v5_adapter / "adapter_config.json").read_text())
    config["target_modules"] = r"^(model(?=\.).*\.(k_proj|up_proj|v_proj|down_proj|gate_proj|o_proj|q_proj))$"
    (v4_adapter / "adapter_config.json").write_text(json.dumps(config))
    assert any(name.startswith("model.visual.") and name.endswith("gate_proj") for name, _ in base.named_modules())
    torch.testing.assert_close(_logits(model_dir, v4_adapter), _logits(model_dir, v5_adapter), rtol=0, atol=1e-6)


def test_an_adapter_cloned_without_git_lfs_is_refused_with_the_fix(tiny_model_dir, v5_adapter, tmp_path):
    pointer = tmp_path / "pointer"
    shutil.copytree(v5_adapter, pointer)
    (pointer / "adapter_model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:"
                                                       + "0" * 64 + "\nsize 1234567\n")
    with pytest.raises(BackboneError, match="Git LFS pointer") as error:  # before: safetensors' SafetensorError
        load_backbone(tiny_model_dir, pointer, device="cpu", dtype="float32")
    assert "git lfs pull" in str(error.value)


def test_an_adapter_that_stores_full_embedding_weights_loads_them(tiny_model_dir, tmp_path):
    # peft's save_embedding_layers (automatic when the vocabulary was resized) stores embed_tokens and lm_head
    # whole next to the LoRA weights; peft loads them into the base model, so they are not unused weights.
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    base = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, local_files_only=True)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"]))
    embedding = peft_model.base_model.model.model.language_model.embed_tokens.weight
    with torch.no_grad():
        embedding[:10] += 1.0
    expected = embedding[:10].detach().clone()
    peft_model.save_pretrained(tmp_path / "with_embeddings", save_embedding_layers=True)
    assert "base_model.model.model.language_model.embed_tokens.weight" in load_file(
        tmp_path / "with_embeddings" / "adapter_model.safetensors")
    backbone = load_backbone(tiny_model_dir, tmp_path / "with_embeddings", device="cpu", dtype="float32")
    torch.testing.assert_close(backbone.core.model.language_model.embed_tokens.weight[:10], expected)


def test_a_transformers_4_adapter_targeting_all_linear_layers_loads(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    base = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, local_files_only=True)
    get_peft_model(base, LoraConfig(r=4, init_lora_weights=False, target_modules="all-linear")).save_pretrained(
        tmp_path / "v5")
    v4_adapter = _v4_copy(tmp_path / "v5", tmp_path / "v4", target_modules="all-linear")  # as written by hand
    torch.testing.assert_close(_logits(tiny_model_dir, v4_adapter), _logits(tiny_model_dir, tmp_path / "v5"),
                               rtol=0, atol=1e-6)


def test_ingest_checks_the_adapter_folder_before_ray_starts(tiny_model_dir, v5_adapter, tmp_path):
    # Before: the embedding actors found the problem, and ingest died with Ray's ActorDiedError traceback.
    from dermground.ingest.pipeline import model_identity

    not_an_adapter = tmp_path / "not_an_adapter"
    not_an_adapter.mkdir()
    with pytest.raises(BackboneError, match="has no adapter_config.json"):
        model_identity(tiny_model_dir, not_an_adapter)
    pointer = tmp_path / "pointer"
    shutil.copytree(v5_adapter, pointer)
    (pointer / "adapter_model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(BackboneError, match="git lfs pull"):
        model_identity(tiny_model_dir, pointer)
    assert model_identity(tiny_model_dir, v5_adapter)[0] == load_backbone(tiny_model_dir, device="cpu").hidden_size


# Each: the field as peft writes it for the v5 model, and the same selection in transformers-4.x names.
V4_SELECTION_FIELDS = {
    "alpha_pattern": ({"model.language_model.layers.0.self_attn.q_proj": 64}, {"model.layers.0.self_attn.q_proj": 64}),
    "rank_pattern": ({"model.language_model.layers.1.self_attn.v_proj": 8}, {"model.layers.1.self_attn.v_proj": 8}),
    "exclude_modules": (r"model\.language_model\.layers\.0\..*", r"model\.layers\.0\..*"),
    "layers_pattern": (["language_model.layers", "blocks"], ["model.layers", "blocks"]),
}


@pytest.mark.parametrize("field", sorted(V4_SELECTION_FIELDS))
def test_a_transformers_4_adapter_selecting_modules_by_4_x_names_applies_like_the_v5_adapter(
        tiny_model_dir, tmp_path, field):
    # Before: only target_modules and the weights were renamed. alpha_pattern on a 4.x name silently kept the
    # default alpha (other vectors); rank_pattern, exclude_modules and layers_pattern refused a good adapter.
    from transformers import Qwen2VLForConditionalGeneration

    v5_value, v4_value = V4_SELECTION_FIELDS[field]
    extra = {"layers_to_transform": [1]} if field == "layers_pattern" else {}
    base = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, local_files_only=True)
    v5_adapter = _save_adapter(base, tmp_path / "v5", **{field: v5_value}, **extra)
    v4_adapter = _v4_copy(v5_adapter, tmp_path / "v4", **{field: v4_value})
    expected = _logits(tiny_model_dir, v5_adapter)
    torch.testing.assert_close(_logits(tiny_model_dir, v4_adapter), expected, rtol=0, atol=1e-6)


def test_an_adapter_with_only_adapter_model_bin_loads_and_a_damaged_one_is_named(tiny_model_dir, v5_adapter, tmp_path):
    # Before: a Git LFS pointer in adapter_model.bin ended in torch's UnpicklingError traceback, a cut-short one in
    # "does not fit model: [Errno 22] Invalid argument".
    pickled = tmp_path / "bin"
    pickled.mkdir()
    shutil.copy(v5_adapter / "adapter_config.json", pickled)
    torch.save(load_file(v5_adapter / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    torch.testing.assert_close(_logits(tiny_model_dir, pickled), _logits(tiny_model_dir, v5_adapter), rtol=0, atol=0)
    whole = (pickled / "adapter_model.bin").read_bytes()
    for damage, message in ((b"version https://git-lfs.github.com/spec/v1\n", "is a Git LFS pointer"),
                            (whole[:len(whole) // 2], "cannot be read .*it is cut short")):
        (pickled / "adapter_model.bin").write_bytes(damage)
        with pytest.raises(BackboneError, match=f"adapter {pickled}: adapter_model.bin: {message}"):
            load_backbone(tiny_model_dir, pickled, device="cpu", dtype="float32")
