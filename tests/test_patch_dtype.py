"""Image patches sent in the model's dtype (platform/model/patch_dtype.py): the same numbers the model made itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dermground.platform.model.patch_dtype import encode_patches, model_patch_dtype, patch_dtype_of


def awkward_floats() -> np.ndarray:
    """Normalised-pixel-like values plus bf16 rounding ties (even and odd kept bit), their
    neighbours, signed zeros, subnormals and the extremes of float32."""
    rng = np.random.default_rng(0)
    values = [rng.normal(0, 1.5, 20_000).astype(np.float32)]
    kept = rng.integers(0, 1 << 16, 2_000, dtype=np.uint32) & np.uint32(0xFF7F)  # finite bf16 patterns, either sign
    for low in (0x8000, 0x7FFF, 0x8001, 0x0000, 0xFFFF):  # the exact tie, below, above, exact, the top
        values.append(((kept << np.uint32(16)) | np.uint32(low)).view(np.float32))
    values.append(np.array([0.0, -0.0, 1e-40, -1e-40, 3.4e38, -3.4e38, np.finfo(np.float32).max], dtype=np.float32))
    return np.concatenate(values).reshape(-1, 1)


def test_bfloat16_patches_are_the_bits_torch_rounds_to():
    values = awkward_floats()
    encoded = encode_patches(values, "bfloat16")
    assert encoded.dtype == np.uint16 and encoded.shape == values.shape
    torch_bits = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(encoded, torch_bits)
    assert patch_dtype_of(encoded) == "bfloat16"


def test_float16_and_float32_patches():
    values = awkward_floats()
    half = encode_patches(values, "float16")
    np.testing.assert_array_equal(half, torch.from_numpy(values).to(torch.float16).numpy())
    assert patch_dtype_of(half) == "float16"
    assert encode_patches(values, "float32") is values and patch_dtype_of(values) == "float32"
    with pytest.raises(ValueError, match="float64"):
        patch_dtype_of(values.astype(np.float64))


def test_the_patch_dtype_follows_the_actors_model():
    assert model_patch_dtype("auto", "auto", 0) == "float32"
    assert model_patch_dtype("auto", "auto", 1) == "bfloat16"
    assert model_patch_dtype("cuda", "auto", 0.5) == "bfloat16"
    assert model_patch_dtype("cpu", "auto", 1) == "float32"  # device cpu: the actor never uses its GPU
    assert model_patch_dtype("auto", "float16", 1) == "float16"
    assert model_patch_dtype("auto", "float32", 1) == "float32"
    with pytest.raises(ValueError, match="unknown dtype"):
        model_patch_dtype("auto", "int8", 1)
