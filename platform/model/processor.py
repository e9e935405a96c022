"""An image-only Qwen2-VL processor: the stock one insists on a video processor (torchvision).

Importing this module registers the processor with `AutoProcessor`; without that registration
`AutoProcessor.from_pretrained(dir)` silently returns only the tokenizer (see QWEN2VL_NOTES.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2VLConfig
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

__all__ = ["ImageOnlyQwen2VLProcessor", "ImageOnlyQwen2_5_VLProcessor", "Qwen2VLImageProcessorPil",
           "fixed_size_image_processor", "load_image_processor", "processor_chat_template"]


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` without the video half: images and text only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # noqa: ANN001
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without the video half (Qwen2.5-VL uses Qwen2-VL's image processor)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # noqa: ANN001
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kwargs)


def fixed_size_image_processor(image_size: int) -> Qwen2VLImageProcessorPil:
    """An image processor that turns every square image into one fixed image_size x image_size grid."""
    if image_size < 28 or image_size % 28:
        raise ValueError(f"image_size must be a positive multiple of 28 (patch 14 x merge 2), got {image_size}")
    pixels = image_size * image_size
    return Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels)


def load_image_processor(model_dir: str | Path) -> Qwen2VLImageProcessorPil:
    """The checkpoint's image processor; its size saved as {"min_pixels", "max_pixels"} is read as what it means.

    transformers 4.45-4.48 saved the pixel limits under those keys; later versions name them
    shortest_edge and longest_edge and, without them, fail on the first image. Many fine-tuned
    checkpoints on the hub were saved that way.
    """
    processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir, local_files_only=True)
    size = processor.size
    if size.shortest_edge is None and size.longest_edge is None and (size.min_pixels or size.max_pixels):
        default = Qwen2VLImageProcessorPil.size
        processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir, local_files_only=True, size={
            "shortest_edge": size.min_pixels or default["shortest_edge"],
            "longest_edge": size.max_pixels or default["longest_edge"]})
    return processor


def processor_chat_template(model_dir: str | Path) -> str | None:
    """The chat template a checkpoint keeps for its processor rather than in tokenizer_config.json, or None.

    Checkpoints saved by a recent transformers keep it in chat_template.jinja, older processors in
    chat_template.json ({"chat_template": ...}); the tokenizer reads only the former, the processor both.
    An unreadable file counts as none: dermground writes its own prompts (prompts.py).
    """
    folder = Path(model_dir)
    try:
        if (folder / "chat_template.jinja").is_file():
            return (folder / "chat_template.jinja").read_text(encoding="utf-8")
        if (folder / "chat_template.json").is_file():
            template = json.loads((folder / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
            return template if isinstance(template, str) else None
    except (OSError, ValueError, AttributeError):
        return None
    return None


AutoProcessor.register(Qwen2VLConfig, ImageOnlyQwen2VLProcessor, exist_ok=True)
AutoProcessor.register(Qwen2_5_VLConfig, ImageOnlyQwen2_5_VLProcessor, exist_ok=True)
