"""The ingest pipeline's CPU stage: read, decode and prepare images for the embedding actors.

Ray Data tasks that read each image by its reference, decode it through the image gate and cut
it into the vision tower's patches with the checkpoint's recipe (platform/model/patch_recipe.py:
numpy and PIL only, so a worker starts in about a second, without torch). The embedding actors
then get ready tensors and spend their time on the model only.

Input batch columns: `isic_id`, `image_ref`, `part`. Output: the same ids, `error` ("" when
prepared, else why the image was rejected), `pixel_values` (per row a [patches, patch values] array
in the model's dtype, platform/model/patch_dtype.py; empty on rejected rows) and `grid_thw`
(int64 [n, 3]; zeros on rejected rows).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from dermground.platform.image_sources import load_image_bytes
# INPUT_ERRORS and rejection_reason live beside the gate (training uses them too); ingest names them from here.
from dermground.platform.images import DEFAULT_MAX_PIXELS, INPUT_ERRORS, decode_image, rejection_reason
from dermground.platform.model.image_inputs import PreparedImage
from dermground.platform.model.patch_dtype import ARRAY_DTYPES, PatchDtype, encode_patches
from dermground.platform.model.patch_recipe import PatchRecipe


@lru_cache(maxsize=4)
def recipe_for(model_dir: str) -> PatchRecipe:
    """The checkpoint's recipe, read once per worker (Ray reuses a task's worker for the next task)."""
    return PatchRecipe.from_model_dir(model_dir)


def prepare_images(batch: dict[str, np.ndarray], model_dir: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                   patch_dtype: PatchDtype = "float32") -> dict[str, np.ndarray]:
    """The stage's function for `Dataset.map_batches`: one batch of image references in, patches out
    (in `patch_dtype`, the actors' model's: half the bytes of float32 for a bfloat16 model)."""
    n = len(batch["image_ref"])
    errors = [""] * n
    prepared: dict[int, PreparedImage] = {}
    for i, ref in enumerate(batch["image_ref"]):
        try:
            item = prepare_reference(str(ref), model_dir, max_pixels)
            prepared[i] = PreparedImage(encode_patches(item.pixel_values, patch_dtype), item.grid_thw)
        except INPUT_ERRORS as exc:
            errors[i] = rejection_reason(exc)
    grids = np.zeros((n, 3), dtype=np.int64)
    for i, item in prepared.items():
        grids[i] = item.grid_thw
    return {"isic_id": batch["isic_id"], "part": batch["part"], "error": np.array(errors, dtype=object),
            "pixel_values": _pixel_column(prepared, n, ARRAY_DTYPES[patch_dtype]), "grid_thw": grids}


def prepare_reference(image_ref: str, model_dir: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> PreparedImage:
    """One image, read by its reference, through the gate and the checkpoint's recipe (INPUT_ERRORS when refused)."""
    return recipe_for(model_dir).prepare(decode_image(load_image_bytes(image_ref), max_pixels=max_pixels))


def _pixel_column(prepared: dict[int, PreparedImage], n: int, dtype: np.dtype) -> np.ndarray:
    # One [n, patches, values] tensor when every row has the same shape (the common case: Ray Data
    # stores it as a fixed-shape tensor column); else one array per row (a variable-shaped column).
    shapes = {item.pixel_values.shape for item in prepared.values()}
    if len(prepared) == n and len(shapes) == 1:
        return np.stack([prepared[i].pixel_values for i in range(n)])
    width = next(iter(shapes))[1] if shapes else 0
    column = np.empty(n, dtype=object)
    for i in range(n):
        column[i] = prepared[i].pixel_values if i in prepared else np.zeros((0, width), dtype=dtype)
    return column
