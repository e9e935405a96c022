"""Model loading, the tiny local model, prompts and fingerprints.

Importing the package registers the image-only Qwen2-VL processor with AutoProcessor.
"""

from dermground.platform.model.loading import Backbone, BackboneError, load_backbone, load_backbone_from_settings
from dermground.platform.model.prompts import PROMPT_VERSION, build_prompt, build_training_text

__all__ = [
    "PROMPT_VERSION", "Backbone", "BackboneError", "build_prompt", "build_training_text", "load_backbone",
    "load_backbone_from_settings",
]
