"""The non-learned baseline embedding ranks colour-alike images first."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dermground.eval.baseline_embedding import baseline_embedding, baseline_embeddings


def _image(rgb: tuple[int, int, int], spot: tuple[int, int, int], radius: int) -> Image.Image:
    yy, xx = np.mgrid[:64, :64]
    arr = np.empty((64, 64, 3), np.uint8)
    arr[:] = rgb
    arr[(yy - 32) ** 2 + (xx - 32) ** 2 < radius**2] = spot
    return Image.fromarray(arr)


def test_unit_norm_and_fixed_dim() -> None:
    vectors = baseline_embeddings([_image((220, 180, 160), (90, 50, 40), r) for r in (5, 10, 20)])
    assert vectors.dtype == np.float32 and vectors.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_similar_lesions_are_closer_than_different_ones() -> None:
    query = baseline_embedding(_image((220, 180, 160), (90, 50, 40), 12))
    alike = baseline_embedding(_image((222, 182, 158), (92, 52, 42), 13))
    other = baseline_embedding(_image((120, 80, 60), (250, 240, 30), 25))
    assert float(query @ alike) > float(query @ other) + 0.1
