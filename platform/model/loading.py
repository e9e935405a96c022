"""Load a Qwen2-VL checkpoint directory (plus an optional LoRA adapter) for inference or training.

Offline only: every `from_pretrained` reads local files. The processor is built from its parts
(PIL image processor + tokenizer) so that a real Qwen2-VL directory, whose processor_class names
the video-capable processor, loads the same way as the tiny local model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, Qwen2VLForConditionalGeneration

from dermground.platform.model.adapter_fit import require_adapter_fits
from dermground.platform.model.checkpoint_check import (
    REDOWNLOAD,
    file_problems,
    tokenizer_problems,
)
from dermground.platform.model.families import FAMILIES, ModelFamily, family_for
from dermground.platform.model.fingerprint import fingerprint as compute_fingerprint
from dermground.platform.model.processor import (
    ImageOnlyQwen2VLProcessor,
    load_image_processor,
    processor_chat_template,
)
from dermground.platform.model.vision_attention import batch_vision_attention
from dermground.platform.next_step import next_command

if TYPE_CHECKING:
    from dermground.platform.settings import Settings, VisionAttentionMode

SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
# transformers v5 nests the decoder under model.language_model and the vision tower under model.visual;
# adapters saved against transformers 4.x (most published Qwen2-VL / Qwen2.5-VL adapters) name them
# model.* and visual.*. peft renames a v4 *base* checkpoint's keys for these classes but not an adapter's
# (it looks the renaming up by model_type, transformers registers it by class name), so without this
# mapping a v4 adapter loads none of its weights and runs as the bare base model.
V4_ADAPTER_KEY_MAPPING = {r"^visual\.": "model.visual.", r"^model\.(?!language_model\.|visual\.)": "model.language_model."}


class BackboneError(RuntimeError):
    """A model or adapter directory is missing, incomplete or of the wrong kind."""


@dataclass(frozen=True)
class Backbone:
    """A loaded model (eval mode unless loaded for training) with everything needed to run it."""

    model: PreTrainedModel  # a Qwen2-VL / Qwen2.5-VL ForConditionalGeneration, or a PeftModel wrapping one
    processor: ImageOnlyQwen2VLProcessor
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    model_dir: Path
    adapter_dir: Path | None = None

    @property
    def core(self) -> Qwen2VLForConditionalGeneration:
        """The Qwen VL module itself (LoRA layers, if any, are injected into it in place)."""
        return unwrap_model(self.model)

    @property
    def hidden_size(self) -> int:
        """Embedding dimension d (decoder width)."""
        return int(self.core.config.text_config.hidden_size)


def unwrap_model(model: torch.nn.Module) -> Qwen2VLForConditionalGeneration:
    """The Qwen2-VL module under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model  # type: ignore[return-value]


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackboneError("device 'cuda' requested (DERMGROUND_DEVICE) but no CUDA device is available; "
                            "set DERMGROUND_DEVICE=auto (CUDA when present, else CPU) or cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """'auto' -> bfloat16 on CUDA, float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise BackboneError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def check_model_dir(model_dir: str | Path) -> Path:
    """Fail with a clear BackboneError unless `model_dir` looks like a supported checkpoint (files only)."""
    problems = file_problems(model_dir)
    if problems:
        raise BackboneError("\n".join(str(p) for p in problems))
    return Path(model_dir)


def model_family(model_dir: str | Path) -> ModelFamily:
    """The family of a checked checkpoint folder (from config.json's model_type)."""
    return family_for(json.loads((Path(model_dir) / "config.json").read_text()).get("model_type"))


def load_processor(model_dir: str | Path) -> ImageOnlyQwen2VLProcessor:
    """The image-only processor of a checkpoint directory (left padding, for batched prompts).

    The processor class follows the family (Qwen2-VL or Qwen2.5-VL); both use Qwen2-VL's image processor.
    """
    path = check_model_dir(model_dir)
    try:
        image_processor = load_image_processor(path)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot load the tokenizer/image processor from {path}: {exc}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    # As transformers' own processor loading does: a template kept only in chat_template.json would
    # otherwise be lost when the processor is saved (pretrain writes a new model folder with it).
    chat_template = tokenizer.chat_template or processor_chat_template(path)
    return model_family(path).processor_class(image_processor=image_processor, tokenizer=tokenizer,
                                              chat_template=chat_template)


def load_backbone(
    model_dir: str | Path,
    adapter_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    for_training: bool = False,
    vision_attention: VisionAttentionMode = "batched",
) -> Backbone:
    """Load model + processor (+ LoRA adapter) from local folders.

    for_training=True leaves the model in train mode and a loaded adapter trainable; otherwise the
    model is in eval mode with gradients off. vision_attention="batched" attends the images of a
    batch in one call per image size (platform/model/vision_attention.py); "per_image" keeps
    transformers' loop over images.
    """
    if vision_attention not in ("batched", "per_image"):
        raise ValueError(f"vision_attention must be 'batched' or 'per_image', not {vision_attention!r}")
    path = check_model_dir(model_dir)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    processor = load_processor(path)
    model_class = model_family(path).model_class
    try:
        model, loading = model_class.from_pretrained(
            path, dtype=torch_dtype, local_files_only=True, attn_implementation="sdpa", output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise BackboneError(f"cannot load model weights from {path}: {exc}") from None
    if loading["missing_keys"]:
        # transformers only logs these and initialises them at random: every vector would be noise.
        missing, unused = sorted(loading["missing_keys"]), sorted(loading["unexpected_keys"])
        raise BackboneError(
            f"{path}: {len(missing)} weights of {model_class.__name__} are not in the checkpoint (e.g. {missing[:3]}) "
            f"and would be random" + (f"; it stores {len(unused)} tensors under other names (e.g. {unused[:3]})"
                                      if unused else "")
            + "; the folder holds another model, was saved from a wrapper (a 'module.' or 'base_model.model.' "
            f"prefix) or is incomplete: save it again with save_pretrained of the {model_class.__name__} "
            f"(`{next_command('model export --merge --adapter ADAPTER --out DIR')}` for base + adapter) or " + REDOWNLOAD
        )
    if vision_attention == "batched":
        batch_vision_attention(model)
    wrong_tokens = tokenizer_problems(processor.tokenizer, model.config)
    if wrong_tokens:
        raise BackboneError("\n".join(str(p) for p in wrong_tokens))
    adapter_path = None
    if adapter_dir is not None:
        adapter_path = Path(adapter_dir)
        require_adapter_fits(adapter_path, path)  # one clear error from the files, before peft's size mismatches
        from peft import PeftModel  # imported here: only adapters need it

        try:
            model = PeftModel.from_pretrained(model, adapter_path, config=peft_adapter_config(adapter_path, model),
                                              is_trainable=for_training, key_mapping=V4_ADAPTER_KEY_MAPPING)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise BackboneError(f"adapter {adapter_path} does not fit model {path}: {exc}") from None
        _require_adapter_weights_applied(model, adapter_path, path)
    model = model.to(torch_device)
    model.train(for_training)
    if not for_training:
        model.requires_grad_(False)
    return Backbone(
        model=model,
        processor=processor,
        tokenizer=processor.tokenizer,
        device=torch_device,
        dtype=torch_dtype,
        fingerprint=compute_fingerprint(path, adapter_path),
        model_dir=path,
        adapter_dir=adapter_path,
    )


def peft_adapter_config(adapter_path: Path, model: torch.nn.Module):  # noqa: ANN202 - a peft PeftConfig
    """The adapter's peft config; a transformers-4.x adapter's module selection is evaluated on 4.x names.

    A regex such as ms-swift's `^(model(?=\\.).*\\.(q_proj|...|gate_proj))$` meant the decoder when the
    decoder was `model.*`; on v5 names it also matches the vision tower (`model.visual.*`, whose
    Qwen2.5-VL MLP has gate/up/down_proj), which would get LoRA layers the file has no weights for.
    A full 4.x path in a list (model.layers.0.self_attn.q_proj) is no suffix of its v5 name, and the
    same holds for exclude_modules, layers_pattern, rank_pattern and alpha_pattern: so every field
    that selects modules is applied to the 4.x names, and the result is written as explicit v5 names.
    """
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(adapter_path))
    if getattr(config, "target_modules", None) is None or not any(
            v5_adapter_key(key) != key for key in _stored_adapter_keys(adapter_path)):
        return config
    return _select_on_v4_names(config, model)


def _select_on_v4_names(config, model: torch.nn.Module):  # noqa: ANN001, ANN202 - a peft LoraConfig
    """`config` with its module selection (targets, exclusions, layers, rank/alpha patterns) made on 4.x names.

    peft's own matching (check_target_module_exists) decides on each module's 4.x name what it would
    have decided under transformers 4.x; the chosen modules and per-module ranks/alphas are then
    written as exact v5 names, so nothing is matched on v5 names again.
    """
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists

    v4_names = {name: old for name, _ in model.named_modules() if (old := _v4_module_name(name)) is not None}
    if isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear":
        # peft resolves it to the model's linear layers by their (v5) names; matched below on 4.x names.
        linear = _maybe_include_all_linear_layers(config, model).target_modules
        config.target_modules = {v4_names.get(name, name) for name in linear}
    targets = {name for name, old in v4_names.items() if check_target_module_exists(config, old)}
    patterns = {field: getattr(config, field, None) or {} for field in ("rank_pattern", "alpha_pattern")}
    config.target_modules = targets
    # Already applied above, on 4.x names (peft would match them against v5 names and miss).
    config.exclude_modules = None
    config.layers_to_transform = None
    config.layers_pattern = None
    for field, pattern in patterns.items():
        if pattern:
            setattr(config, field, {re.escape(name): pattern[key] for name in sorted(targets)
                                    if (key := _pattern_key(pattern, v4_names[name])) is not None})
    return config


def _pattern_key(pattern: dict, name: str) -> str | None:
    """The first key of a rank/alpha pattern that selects module `name`, by peft's rule (get_pattern_key)."""
    return next((key for key in pattern if re.match(rf"(.*\.)?({key})$", name)), None)


def _v5_name(name: str) -> str:
    """A transformers-4.x module or weight name under v5 (the first rule of V4_ADAPTER_KEY_MAPPING that applies)."""
    for pattern, replacement in V4_ADAPTER_KEY_MAPPING.items():
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    return name


def v5_adapter_key(key: str) -> str:
    """A stored adapter weight's name under transformers v5 (what peft makes of it with V4_ADAPTER_KEY_MAPPING)."""
    prefix = "base_model.model."
    return prefix + _v5_name(key.removeprefix(prefix)) if key.startswith(prefix) else key


def _v4_module_name(name: str) -> str | None:
    """A v5 module's name under transformers 4.x (None for the v5-only wrapper `model`)."""
    for new, old in (("model.language_model", "model"), ("model.visual", "visual")):
        if name == new or name.startswith(new + "."):
            return old + name.removeprefix(new)
    return None if name in ("", "model") else name


def _stored_adapter_keys(adapter_path: Path) -> set[str]:
    """The weight names an adapter folder stores (from the safetensors header when there is one)."""
    file = adapter_path / "adapter_model.safetensors"
    if file.is_file():
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            return set(handle.keys())
    from peft.utils import load_peft_weights

    return set(load_peft_weights(str(adapter_path), device="cpu"))


def _require_adapter_weights_applied(model: torch.nn.Module, adapter_path: Path, model_path: Path) -> None:
    """BackboneError unless every adapter weight the model expects came from the file, and nothing else.

    peft only warns when an adapter's names do not match the model's modules; its LoRA layers then
    keep their initial weights (B = 0: the bare base model) and every vector would silently be the base's.
    """
    from peft import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(model))
    stored = {v5_adapter_key(key) for key in _stored_adapter_keys(adapter_path)}
    # A stored full weight of the model itself (peft's save_embedding_layers: embed_tokens, lm_head) is loaded too.
    missing, unused = sorted(expected - stored), sorted(stored - expected - set(model.state_dict()))
    if missing or unused:
        raise BackboneError(
            f"adapter {adapter_path} does not fit model {model_path}: {len(missing)} of its LoRA weights are not in "
            f"the file (e.g. {missing[:2]}) and {len(unused)} stored weights name no module of the model "
            f"(e.g. {unused[:2]}); it was saved from another model or from a sub-module. Save the adapter from "
            f"a PeftModel of the whole {type(unwrap_model(model)).__name__} (or load the matching base with --model)"
        )


def load_backbone_from_settings(settings: Settings) -> Backbone:
    """load_backbone with model/adapter directories, device and dtype from settings."""
    return load_backbone(settings.base_model_dir, settings.adapter_dir, device=settings.device, dtype=settings.dtype,
                         vision_attention=settings.vision_attention)
