"""h_im / h_im_a: the shared-prefix path equals one full pass per input, batching is exact."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dermground.platform.attributes import ATTRIBUTE_NAMES
from dermground.platform.embed import Embedder, EmbeddingBatch
from dermground.platform.model.loading import load_backbone


def lesion_image(seed: int, size: tuple[int, int] = (128, 128)) -> Image.Image:
    """A skin-coloured square with a darker noisy blob: distinct content per seed."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    skin = np.array([220, 180, 150]) + rng.integers(-30, 30, 3)
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.1, 0.35) * min(h, w)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    pixels = np.broadcast_to(skin, (h, w, 3)).astype(float) + rng.normal(0, 8, (h, w, 3))
    pixels[inside] = np.array([90, 50, 30]) + rng.integers(-20, 40, 3) + rng.normal(0, 12, (inside.sum(), 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    # The last image is not square: it gets another grid, so batches need real padding.
    return [lesion_image(seed) for seed in range(4)] + [lesion_image(9, size=(150, 96))]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_equal_embeddings(fast: EmbeddingBatch, reference: EmbeddingBatch) -> None:
    assert fast.h_im is not None and reference.h_im is not None
    assert cosines(fast.h_im, reference.h_im).min() >= 0.9999
    assert np.abs(fast.h_im - reference.h_im).max() < 1e-4
    assert fast.h_im_a.keys() == reference.h_im_a.keys()
    for name in reference.h_im_a:
        assert cosines(fast.h_im_a[name], reference.h_im_a[name]).min() >= 0.9999, name
        assert np.abs(fast.h_im_a[name] - reference.h_im_a[name]).max() < 1e-4, name


@pytest.fixture(scope="module")
def reference(tiny_backbone, images) -> EmbeddingBatch:
    return Embedder(tiny_backbone).embed_reference(images)


def test_shared_prefix_equals_reference_for_every_attribute(tiny_backbone, images, reference):
    fast = Embedder(tiny_backbone, batch_size=8).embed(images)
    assert set(fast.h_im_a) == set(ATTRIBUTE_NAMES)
    assert_equal_embeddings(fast, reference)


def test_the_equality_test_can_fail(tiny_backbone, images, reference):
    # Negative control: continuing the suffix at the plain token count (no rope delta) is wrong,
    # and different questions give clearly different vectors, so a 0.9999 bound means something.
    wrong = Embedder(tiny_backbone)._embed(images, None, True, apply_rope_delta=False)
    worst = min(cosines(wrong.h_im_a[n], reference.h_im_a[n]).min() for n in ATTRIBUTE_NAMES)
    assert worst < 0.99
    assert cosines(reference.h_im_a["areaMM2"], reference.h_im_a["deltaB"]).max() < 0.99
    assert cosines(reference.h_im[:1], reference.h_im[1:2])[0] < 0.9999


def test_batch_of_many_equals_one_at_a_time(tiny_backbone, images):
    many = Embedder(tiny_backbone, batch_size=5, suffix_batch=7).embed(images)
    singles = [Embedder(tiny_backbone, batch_size=1).embed([image]) for image in images]
    one_by_one = EmbeddingBatch(
        h_im=np.concatenate([s.h_im for s in singles]),
        h_im_a={n: np.concatenate([s.h_im_a[n] for s in singles]) for n in ATTRIBUTE_NAMES},
    )
    assert_equal_embeddings(many, one_by_one)


def test_output_contract(tiny_backbone, images):
    embedder = Embedder(tiny_backbone)
    batch = embedder.embed(images, attributes=["areaMM2", "B"])
    assert batch.dim == embedder.dim == tiny_backbone.hidden_size == 128
    assert batch.fingerprint == tiny_backbone.fingerprint
    assert list(batch.h_im_a) == ["areaMM2", "B"]
    assert len(batch) == len(images)
    for array in [batch.h_im, *batch.h_im_a.values()]:
        assert array.dtype == np.float32 and array.shape == (len(images), 128)
        assert np.isfinite(array).all() and (np.linalg.norm(array, axis=1) > 0).all()
    image_only = embedder.embed(images[:2], attributes=[])
    assert image_only.h_im.shape == (2, 128) and image_only.h_im_a == {}
    np.testing.assert_allclose(image_only.h_im, batch.h_im[:2], atol=1e-5)
    questions_only = embedder.embed(images[:2], attributes=["A"], include_image=False)
    assert questions_only.h_im is None and questions_only.h_im_a["A"].shape == (2, 128)
    empty = embedder.embed([])
    assert empty.h_im.shape == (0, 128) and empty.h_im_a["areaMM2"].shape == (0, 128)


def test_works_with_a_lora_adapter(tiny_model_dir, tmp_path, images, reference, make_tiny_adapter):
    adapter = make_tiny_adapter(tiny_model_dir, tmp_path / "adapter")
    backbone = load_backbone(tiny_model_dir, adapter_dir=adapter, device="cpu", dtype="float32")
    embedder = Embedder(backbone, batch_size=3)
    names = ["areaMM2", "deltaL", "Bext"]
    fast = embedder.embed(images[-2:], attributes=names)
    assert_equal_embeddings(fast, embedder.embed_reference(images[-2:], attributes=names))
    # The adapter is really in the computation: the vectors moved away from the base model's.
    assert cosines(fast.h_im_a["areaMM2"], reference.h_im_a["areaMM2"][-2:]).max() < 0.9999
    assert fast.fingerprint != reference.fingerprint


def test_rows_sharing_the_prefix_cache_equal_rows_with_their_own_copy(tiny_backbone, images):
    # The suffix rows read their image's prefix cache in place (shared_prefix._SharedPrefixLayer);
    # the previous path copied it per row. Same numbers, bit for bit, for rows in any order (greedy
    # and sampled prediction interleave images), through decoding steps after the suffix pass, and
    # the prefix cache is left as it was for the next pass over the same images.
    import torch

    from dermground.platform.model.shared_prefix import encode_prefix, run_suffixes, step, tokenize_suffixes

    suffixes = tokenize_suffixes(tiny_backbone, ["What is the lesion's area?", "Which colour?", "deltaB?"])
    image_rows = [0, 0, 2, 1, 0, 4, 4, 3]
    row_suffixes = [suffixes[i % len(suffixes)] for i in range(len(image_rows))]
    with torch.inference_mode():
        state = encode_prefix(tiny_backbone, images)
        prefix_keys = [keys.clone() for keys, *_ in state.cache]
        results = {}
        for copy_prefix in (True, False):
            last, suffix_state = run_suffixes(tiny_backbone, state, image_rows, row_suffixes, copy_prefix=copy_prefix)
            tokens = torch.arange(len(image_rows)) + 5
            results[copy_prefix] = [last, step(tiny_backbone, suffix_state, tokens),
                                    step(tiny_backbone, suffix_state, tokens + 1)]
        for keys, before in zip((keys for keys, *_ in state.cache), prefix_keys, strict=True):
            assert torch.equal(keys, before)
    for copied, shared in zip(results[True], results[False], strict=True):
        assert torch.equal(copied, shared)
