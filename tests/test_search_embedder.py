"""Search's embedder batch (platform/search_embedder.py, DERMGROUND_SEARCH_EMBED_BATCH): the sizing
arithmetic, the CPU default, a fixed setting, and the setting's validation."""

from __future__ import annotations

import pytest

from dermground.platform.model.processor import Qwen2VLImageProcessorPil, fixed_size_image_processor
from dermground.platform.search_embedder import (
    CPU_BATCH,
    PROBE_MAX_PIXELS,
    MemoryProbe,
    fitting_batch_size,
    probe_image,
    probe_memory,
    search_embedder,
)
from dermground.platform.settings import SettingsError, load_settings

MiB = 2**20


def test_fitting_batch_size_is_the_largest_batch_within_the_fraction() -> None:
    # 0.8 x 1000 = 800 bytes; 100 fixed; 70 an image -> 10 images (800 - 100 = 700).
    assert fitting_batch_size(1000, 70, 100, cap=64, fraction=0.8) == 10
    assert fitting_batch_size(1000, 71, 100, cap=64, fraction=0.8) == 9
    # An 80 GB card, 2 GB fixed, 900 MB an image: 68 fit, the cap is 64.
    assert fitting_batch_size(80_000 * MiB, 900 * MiB, 2_000 * MiB, cap=64) == 64
    assert fitting_batch_size(80_000 * MiB, 900 * MiB, 2_000 * MiB, cap=1000) == (64_000 - 2_000) // 900


@pytest.mark.parametrize(("free", "per_image", "fixed", "cap", "expected"), [
    (0, 100, 0, 64, 1),             # no memory at all: still one image at a time
    (1000, 100, 5000, 64, 1),       # the fixed part alone does not fit
    (1000, 10_000, 0, 64, 1),       # not even one image fits
    (10**12, 100, 0, 64, 64),       # plenty of memory: the cap
    (10**12, 100, 0, 3, 3),         # b = 3 candidates: never a larger batch than there are
    (1000, 0, 0, 16, 16),           # an image adds nothing measurable: the cap
    (-5, 100, -5, 8, 1),            # nonsense readings never give less than 1
])
def test_fitting_batch_size_edges(free, per_image, fixed, cap, expected) -> None:
    assert fitting_batch_size(free, per_image, fixed, cap) == expected


def test_fitting_batch_size_refuses_a_bad_cap_or_fraction() -> None:
    with pytest.raises(ValueError, match="cap"):
        fitting_batch_size(1000, 10, 0, cap=0)
    with pytest.raises(ValueError, match="fraction"):
        fitting_batch_size(1000, 10, 0, cap=4, fraction=1.5)


def test_memory_probe_batch_size_uses_the_arithmetic() -> None:
    probe = MemoryProbe(per_image_bytes=100, fixed_bytes=100, free_bytes=1000)
    assert probe.batch_size(cap=64) == 7 and probe.batch_size(cap=5) == 5


def test_probe_image_is_as_large_as_a_candidate_can_reach_the_model() -> None:
    assert probe_image(fixed_size_image_processor(112)).size == (112, 112)
    # Qwen's published processor allows 12.8 MP; the image gate hands on less than PROBE_MAX_PIXELS.
    side = probe_image(Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12_845_056)).size[0]
    assert side * side <= PROBE_MAX_PIXELS and (side + 1) ** 2 > PROBE_MAX_PIXELS


def test_cpu_auto_keeps_the_default_and_an_integer_is_used_as_given(tiny_backbone) -> None:
    auto = search_embedder(tiny_backbone, "auto")
    assert (auto.batch_size, auto.suffix_batch) == (CPU_BATCH, 16 * CPU_BATCH)
    fixed = search_embedder(tiny_backbone, 3)
    assert (fixed.batch_size, fixed.suffix_batch) == (3, 48)


def test_setting_accepts_auto_or_a_positive_integer(monkeypatch) -> None:
    for raw, parsed in [("auto", "auto"), ("AUTO", "auto"), ("12", 12), (" 2 ", 2)]:
        monkeypatch.setenv("DERMGROUND_SEARCH_EMBED_BATCH", raw)
        assert load_settings().search_embed_batch == parsed
    for raw in ("0", "-3", "many", "2.5"):
        monkeypatch.setenv("DERMGROUND_SEARCH_EMBED_BATCH", raw)
        with pytest.raises(SettingsError, match="DERMGROUND_SEARCH_EMBED_BATCH.*'auto' or an integer >= 1"):
            load_settings()
    monkeypatch.delenv("DERMGROUND_SEARCH_EMBED_BATCH")
    assert load_settings().search_embed_batch == "auto"


def test_probe_on_cuda_measures_memory_per_image(tiny_model_dir) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("the probe measures CUDA memory; this machine has no GPU")
    from dermground.platform.model.loading import load_backbone

    backbone = load_backbone(tiny_model_dir, device="cuda", dtype="float32")
    probe = probe_memory(backbone)
    assert probe.per_image_bytes > 0 and probe.free_bytes > 0
    assert 1 <= search_embedder(backbone, "auto").batch_size <= 64
