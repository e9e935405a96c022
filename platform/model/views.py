"""The eight dihedral views of a square crop (turns and mirror images), as images and as patches.

Every lesion attribute is a property of the lesion, not of how the crop is turned, so it is the
same in all eight views (`platform.attribute_measure` gives exactly the same numbers; tested).
Prediction pools the model's answers over views (platform/predict.py); training may show each
example in a random view (train/loop.py). The views are ordered so that the first 1, 2, 4 and 8 are groups:
identity; + left-right mirror; + top-bottom mirror and half turn; + quarter turns and diagonals.
"""

from __future__ import annotations

import torch
from PIL import Image

from dermground.platform.settings import MAX_VIEWS

Transpose = Image.Transpose

DIHEDRAL_VIEWS: tuple[Transpose | None, ...] = (
    None, Transpose.FLIP_LEFT_RIGHT, Transpose.FLIP_TOP_BOTTOM, Transpose.ROTATE_180,
    Transpose.ROTATE_90, Transpose.ROTATE_270, Transpose.TRANSPOSE, Transpose.TRANSVERSE,
)
assert len(DIHEDRAL_VIEWS) == MAX_VIEWS


def _check_view(view: int) -> None:
    if not 0 <= view < MAX_VIEWS:
        raise ValueError(f"view must be between 0 and {MAX_VIEWS - 1}, got {view}")


def dihedral_view(image: Image.Image, view: int) -> Image.Image:
    """View number `view` (0-7) of an image: turned and/or mirrored as DIHEDRAL_VIEWS lists."""
    _check_view(view)
    transform = DIHEDRAL_VIEWS[view]
    return image if transform is None else image.transpose(transform)


def _turn(pixels: torch.Tensor, view: int) -> torch.Tensor:
    """The same view of a [..., height, width] tensor as `dihedral_view` gives of a PIL image."""
    rows, cols = pixels.dim() - 2, pixels.dim() - 1
    turns = (
        lambda x: x,
        lambda x: x.flip(cols),
        lambda x: x.flip(rows),
        lambda x: x.flip(rows, cols),
        lambda x: x.rot90(1, (rows, cols)),  # PIL's ROTATE_90 is counter-clockwise, as is rot90
        lambda x: x.rot90(3, (rows, cols)),
        lambda x: x.transpose(rows, cols),
        lambda x: x.transpose(rows, cols).flip(rows, cols),
    )
    return turns[view](pixels)


def turn_patches(pixel_values: torch.Tensor, grid_thw: torch.Tensor, view: int, merge_size: int = 2,
                 channels: int = 3, temporal_patch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A view of one processed image: its Qwen2-VL patch rows and grid (shape (3,) or (1, 3)) as if
    the turned image had been processed.

    The processor's rows are [t, h/m, w/m, m, m] patches of [channel, time, p, p] values
    (transformers' Qwen2-VL `patchify`); the rows are put back into a picture, turned, and cut into
    patches again (~0.1 ms for a 112 px image, benchmarks/views.py). Normalisation is per channel,
    so it commutes with turning.
    """
    _check_view(view)
    if view == 0:
        return pixel_values, grid_thw
    if grid_thw.numel() != 3:
        raise ValueError(f"turn_patches takes one image's grid (t, h, w), got {tuple(grid_thw.shape)}")
    t, h, w = (int(v) for v in grid_thw.reshape(3))
    m, c, tp = merge_size, channels, temporal_patch_size
    p = round((pixel_values.shape[1] / (c * tp)) ** 0.5)
    if pixel_values.shape != (t * h * w, c * tp * p * p) or h % m or w % m:
        raise ValueError(f"pixel_values {tuple(pixel_values.shape)} do not match the grid {(t, h, w)}")
    picture = (pixel_values.reshape(t, h // m, w // m, m, m, c, tp, p, p)
               .permute(0, 5, 6, 1, 3, 7, 2, 4, 8).reshape(t, c, tp, h * p, w * p))
    turned = _turn(picture, view)
    new_h, new_w = turned.shape[-2] // p, turned.shape[-1] // p
    rows = (turned.reshape(t, c, tp, new_h // m, m, p, new_w // m, m, p)
            .permute(0, 3, 6, 4, 7, 1, 2, 5, 8).reshape(t * new_h * new_w, c * tp * p * p))
    return rows.contiguous(), torch.tensor([t, new_h, new_w], dtype=grid_thw.dtype).reshape(grid_thw.shape)
