"""Images as the vision tower takes them, prepared apart from the model.

`prepare_pixels` runs a checkpoint's image processor (resize to its patch grid, normalise, cut
into flattened patches) and keeps each image's patches and grid apart. `encode_prefix`
(shared_prefix.py) goes through it, so ingest's CPU stage (which prepares) and every other caller
(which passes images) run the same computation. Light on purpose (numpy and PIL, no torch): the
ingest driver and its CPU stage import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from dermground.platform.model.processor import Qwen2VLImageProcessorPil


@dataclass(frozen=True)
class PreparedImage:
    """One image as the vision tower takes it: its flattened patches and their (t, h, w) grid."""

    # float32 [t*h*w, channels * temporal_patch * patch * patch]; ingest's CPU stage may send them in
    # the model's dtype instead (float16, or bfloat16 as uint16 bit patterns: patch_dtype.py).
    pixel_values: np.ndarray
    grid_thw: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.pixel_values.ndim != 2 or self.pixel_values.shape[0] != self.patches:
            raise ValueError(f"pixel_values of shape {self.pixel_values.shape} do not match the grid "
                             f"{self.grid_thw} ({self.patches} patches)")

    @property
    def patches(self) -> int:
        """Patches the vision tower attends over for this image (t x h x w)."""
        return int(np.prod(self.grid_thw))


def rgb_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    """RGB copies of the inputs (the processor rejects palette/alpha modes inconsistently)."""
    return [im if im.mode == "RGB" else im.convert("RGB") for im in images]


def prepare_pixels(image_processor: Qwen2VLImageProcessorPil, images: Sequence[Image.Image]) -> list[PreparedImage]:
    """Each image resized, normalised and patchified by the checkpoint's image processor.

    Raises what the processor raises for an image it refuses (ValueError).
    """
    if not images:
        return []
    out = image_processor(images=rgb_images(images), return_tensors="np")
    grids = np.asarray(out["image_grid_thw"], dtype=np.int64)
    pixels = np.asarray(out["pixel_values"], dtype=np.float32)
    bounds = np.cumsum([0, *(int(np.prod(g)) for g in grids)])
    return [PreparedImage(pixels[bounds[i]:bounds[i + 1]], (int(g[0]), int(g[1]), int(g[2])))
            for i, g in enumerate(grids)]


def passes_within(images: Sequence[PreparedImage], max_patches: int | None) -> list[list[PreparedImage]]:
    """Consecutive images grouped into model passes of at most `max_patches` patches together.

    A pass's memory grows with its patches (vision activations, and the decoder's image tokens
    and their cache), not with its image count: a budget in patches lets many small images share a
    pass that would fit only a few large ones. An image above the budget on its own gets a pass
    to itself; None = one pass for everything.
    """
    if max_patches is None:
        return [list(images)] if images else []
    passes: list[list[PreparedImage]] = []
    current: list[PreparedImage] = []
    used = 0
    for image in images:
        if current and used + image.patches > max_patches:
            passes.append(current)
            current, used = [], 0
        current.append(image)
        used += image.patches
    if current:
        passes.append(current)
    return passes

