"""Search's embedder passes (platform/search_embedder.py, DERMGROUND_SEARCH_EMBED_BATCH): the patch
budget's arithmetic, passes within it, the CPU default, a fixed setting, and the setting's validation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dermground.platform.model.image_inputs import PreparedImage, passes_within
from dermground.platform.search_embedder import (
    CPU_BATCH,
    MemoryProbe,
    fitting_patch_budget,
    probe_memory,
    search_embedder,
)
from dermground.platform.settings import SettingsError, load_settings

MiB = 2**20


def prepared(patches: int) -> PreparedImage:
    """A prepared image of `patches` patches in one row (the content does not matter here)."""
    return PreparedImage(np.zeros((patches, 8), dtype=np.float32), (1, 1, patches))


def test_the_patch_budget_is_the_most_patches_within_the_fraction() -> None:
    # 0.8 x 1000 = 800 bytes; 100 fixed; 0.7 a patch -> 1000 patches (800 - 100 = 700).
    assert fitting_patch_budget(1000, 0.7, 100, fraction=0.8) == 1000
    assert fitting_patch_budget(1000, 0.71, 100, fraction=0.8) == 985
    # An 80 GB card, 2 GB fixed, 0.9 MiB a patch: 62,000 MiB / 0.9 = 68,888 patches, i.e. about
    # 67 images of 1,024 patches (448 px) or 688 SLICE-3D crops of 100.
    assert fitting_patch_budget(80_000 * MiB, 0.9 * MiB, 2_000 * MiB) == 68_888


@pytest.mark.parametrize(("free", "per_patch", "fixed", "expected"), [
    (0, 100, 0, 0),             # no memory at all: the Embedder still runs one image a pass
    (1000, 100, 5000, 0),       # the fixed part alone does not fit
    (1000, 0, 0, None),         # a patch adds nothing measurable: no limit
    (-5, 100, -5, 0),           # nonsense readings never give less than 0
])
def test_the_patch_budget_edges(free, per_patch, fixed, expected) -> None:
    assert fitting_patch_budget(free, per_patch, fixed) == expected


def test_the_patch_budget_refuses_a_bad_fraction() -> None:
    with pytest.raises(ValueError, match="fraction"):
        fitting_patch_budget(1000, 10, 0, fraction=1.5)


def test_memory_probe_budget_uses_the_arithmetic() -> None:
    probe = MemoryProbe(per_patch_bytes=0.5, fixed_bytes=100, free_bytes=1000, probe_patches=64)
    assert probe.patch_budget() == 1400


def test_passes_hold_at_most_the_budget_of_patches_and_a_large_image_gets_its_own() -> None:
    images = [prepared(n) for n in (4, 4, 4, 16, 4, 2)]
    assert [[i.patches for i in p] for p in passes_within(images, 8)] == [[4, 4], [4], [16], [4, 2]]
    assert [[i.patches for i in p] for p in passes_within(images, None)] == [[4, 4, 4, 16, 4, 2]]
    assert passes_within([], 8) == []


def test_an_embedder_with_a_patch_budget_gives_the_same_vectors(tiny_backbone) -> None:
    from dermground.platform.embed import Embedder
    from dermground.platform.model.image_inputs import prepare_pixels

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, 112, 3), dtype=np.uint8)) for h in (112, 168, 112, 224, 112)]
    ready = prepare_pixels(tiny_backbone.processor.image_processor, images)
    sizes = [p.patches for p in ready]
    whole = Embedder(tiny_backbone, batch_size=5, suffix_batch=80).embed_prepared(ready, ["A"])
    budget = max(sizes)  # several passes, each within one large image's patches
    split = Embedder(tiny_backbone, batch_size=5, suffix_batch=80, max_patches=budget).embed_prepared(ready, ["A"])
    assert len(passes_within(ready, budget)) >= 3
    np.testing.assert_allclose(split.h_im, whole.h_im, rtol=0, atol=1e-5)
    np.testing.assert_allclose(split.h_im_a["A"], whole.h_im_a["A"], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="max_patches"):
        Embedder(tiny_backbone, max_patches=0)


def test_cpu_auto_keeps_the_default_and_an_integer_is_used_as_given(tiny_backbone) -> None:
    auto = search_embedder(tiny_backbone, "auto")
    assert (auto.batch_size, auto.suffix_batch, auto.max_patches) == (CPU_BATCH, 16 * CPU_BATCH, None)
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
    assert probe.per_patch_bytes > 0 and probe.free_bytes > 0 and probe.probe_patches > 0
    embedder = search_embedder(backbone, "auto")
    assert embedder.batch_size == 64 and embedder.max_patches is not None and embedder.max_patches >= 1
