"""Shared pytest fixtures. Append new fixtures below; keep each one self-contained."""

from __future__ import annotations

import pytest


# --- the tiny Qwen2-VL (platform/model) ----------------------------------------------------
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random-weight Qwen2-VL checkpoint folder (seed 0, images at 112 px = 16 image tokens)."""
    from dermground.platform.model.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_model") / "base", seed=0, preset="tiny", image_size=112)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_model_dir):
    """The tiny model loaded through the normal path (CPU, float32, eval mode)."""
    from dermground.platform.model.loading import load_backbone

    return load_backbone(tiny_model_dir, device="cpu", dtype="float32")
