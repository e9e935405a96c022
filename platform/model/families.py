"""The Qwen vision-language families dermground runs on, keyed by a checkpoint's `model_type`.

Qwen2-VL and Qwen2.5-VL share the prompt format, the special tokens, the image processor and the
3-D rotary positions, so everything downstream (shared prefix, training, prediction) is the same
code; what differs is the model class, the processor class, the vision block's MLP (fc1/fc2 vs a
gated gate/up/down MLP) and the vision config's names for its width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from dermground.platform.model.processor import ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen2VLProcessor


@dataclass(frozen=True)
class ModelFamily:
    """What differs between the supported Qwen VL families."""

    model_type: str
    label: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    processor_class: type
    vision_mlp: str  # regex alternatives of the vision blocks' MLP linears (LoRA targets)


FAMILIES: dict[str, ModelFamily] = {
    "qwen2_vl": ModelFamily("qwen2_vl", "Qwen2-VL", Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                            ImageOnlyQwen2VLProcessor, "fc1|fc2"),
    "qwen2_5_vl": ModelFamily("qwen2_5_vl", "Qwen2.5-VL", Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              ImageOnlyQwen2_5_VLProcessor, "gate_proj|up_proj|down_proj"),
}
DEFAULT_FAMILY = "qwen2_vl"

# Families transformers knows but dermground refuses, with the reason a user sees.
REFUSED_FAMILIES: dict[str, str] = {
    "qwen3_vl": "Qwen3-VL is not supported yet: its vision tower uses 16 px patches and other layer names "
                "(linear_fc1/linear_fc2), and its decoder adds vision features from intermediate vision layers "
                "(DeepStack) into its first layers; dermground's LoRA targets, image checks and shared-prefix "
                "equality are neither made nor verified for it (docs/DEPLOY.md, 'Qwen3-VL'). Use a Qwen2-VL or "
                "Qwen2.5-VL checkpoint",
    "qwen3_vl_moe": "Qwen3-VL-MoE is not supported (see qwen3_vl); use a Qwen2-VL or Qwen2.5-VL checkpoint",
}


def family_for(model_type: str | None) -> ModelFamily:
    """The family of a checkpoint's model_type; KeyError for anything else (callers word the error)."""
    return FAMILIES[str(model_type)]


def family_of_model(model: torch.nn.Module) -> ModelFamily:
    """The family of a loaded model (a PEFT wrapper is looked through)."""
    get_base = getattr(model, "get_base_model", None)
    core = get_base() if callable(get_base) else model
    return family_for(getattr(core.config, "model_type", None))


def vision_width(vision_config: PretrainedConfig) -> int:
    """The vision tower's own width: Qwen2-VL calls it embed_dim, Qwen2.5-VL hidden_size."""
    return int(getattr(vision_config, "embed_dim", None) or vision_config.hidden_size)
