"""Model loading, the tiny local model, prompts and fingerprints.

Importing `dermground.platform.model.processor` (loading.py does) registers the image-only
Qwen2-VL processor with AutoProcessor. The names below load lazily, so that a light submodule
(prompts, image_inputs) can be imported without torch and transformers: the ingest driver does.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Backbone": "loading", "BackboneError": "loading", "load_backbone": "loading",
    "load_backbone_from_settings": "loading",
    "PROMPT_VERSION": "prompts", "build_prompt": "prompts", "build_training_text": "prompts",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
