"""Image patches in the dtype the model runs in, made on the CPU side (numpy only, no torch).

The vision tower takes its patches in the model's dtype: the model casts float32 patches to
bfloat16 / float16 as its first step. Casting them before they leave ingest's CPU stage gives the
model the very same numbers (the same round-to-nearest-even) and halves what travels through
Ray's object store to the embedding actors and what is copied to the card. numpy has no
bfloat16: those patches travel as the uint16 bit patterns of the bfloat16 values, and the model
side reads them back as bfloat16 without a copy (shared_prefix.prefix_inputs).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

PatchDtype = Literal["float32", "bfloat16", "float16"]
# numpy's dtype for each patch dtype's arrays (bfloat16: its bit patterns).
ARRAY_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(np.uint16),
                                     "float16": np.dtype(np.float16)}


def model_patch_dtype(device: str, dtype: str, gpus_per_actor: float) -> PatchDtype:
    """The dtype an embedding actor's model runs in, from the device and dtype settings and the
    actor's GPUs: 'auto' is bfloat16 on a GPU and float32 on a CPU (loading.py resolve_dtype; an
    actor without GPUs sees none)."""
    if dtype == "auto":
        return "bfloat16" if gpus_per_actor > 0 and device != "cpu" else "float32"
    if dtype not in ARRAY_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return dtype  # type: ignore[return-value]


def encode_patches(pixel_values: np.ndarray, dtype: PatchDtype) -> np.ndarray:
    """float32 patches as `dtype`'s array (bfloat16: uint16 bit patterns), rounded to nearest even as torch does."""
    if dtype == "float32":
        return pixel_values
    if dtype == "float16":
        return pixel_values.astype(np.float16)
    bits = np.ascontiguousarray(pixel_values, dtype=np.float32).view(np.uint32)
    # Round to nearest, ties to even: add 0x7FFF plus the lowest kept bit, keep the high half.
    # Patches are normalised pixels, always finite (NaN/inf would need torch's special cases).
    # In place on one temporary: an image's patches are megabytes, and each new array costs more
    # than its arithmetic (0.53 against 0.83 ms for 1,024 patches).
    rounded = bits >> np.uint32(16)
    rounded &= np.uint32(1)
    rounded += np.uint32(0x7FFF)
    rounded += bits
    rounded >>= np.uint32(16)
    return rounded.astype(np.uint16)


def patch_dtype_of(pixel_values: np.ndarray) -> PatchDtype:
    """Which patch dtype an array holds (ValueError for any other array dtype)."""
    for name, array_dtype in ARRAY_DTYPES.items():
        if pixel_values.dtype == array_dtype:
            return name  # type: ignore[return-value]
    raise ValueError(f"image patches of dtype {pixel_values.dtype}; expected float32, float16 or "
                     "bfloat16 bit patterns (uint16)")
