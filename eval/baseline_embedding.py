"""A generic, non-learned image embedding: the retrieval baseline (e) of the evaluation.

The paper's (e) is MONET, a CLIP-like model trained on general skin images; no such weights
can be had here, so (e) is the classic content-based-retrieval descriptor: a colour histogram
plus a coarse thumbnail, both in CIE LAB so distances follow perceived colour.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageCms

_SRGB_TO_LAB = ImageCms.buildTransformFromOpenProfiles(
    ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
THUMB = 8
BINS = 8


def baseline_embedding(image: Image.Image) -> np.ndarray:
    """LAB histogram (8 bins per channel, joint a-b) + an 8x8 LAB thumbnail, L2-normalised."""
    lab = np.asarray(ImageCms.applyTransform(image.convert("RGB"), _SRGB_TO_LAB), dtype=np.float32)
    l_hist = np.histogram(lab[..., 0], bins=BINS, range=(0, 256))[0]
    ab_hist = np.histogram2d(lab[..., 1].ravel(), lab[..., 2].ravel(), bins=BINS,
                             range=[[0, 256], [0, 256]])[0].ravel()
    hist = np.concatenate([l_hist, ab_hist]).astype(np.float32)
    hist /= max(float(hist.sum()), 1.0)
    thumb_img = Image.fromarray(lab.astype(np.uint8), mode="RGB").resize((THUMB, THUMB), Image.BILINEAR)
    thumb = np.asarray(thumb_img, dtype=np.float32).ravel() / 255.0
    thumb -= thumb.mean()
    vector = np.concatenate([hist / (np.linalg.norm(hist) + 1e-9), thumb / (np.linalg.norm(thumb) + 1e-9)])
    return (vector / (np.linalg.norm(vector) + 1e-9)).astype(np.float32)


def baseline_embeddings(images: list[Image.Image]) -> np.ndarray:
    """Stacked baseline embeddings, shape (n, dim), float32."""
    return np.stack([baseline_embedding(im) for im in images]) if images else np.zeros((0, 0), np.float32)
