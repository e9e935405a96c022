"""Hierarchical candidates read and prepared in a thread pool, overlapped with the model
(platform/candidate_embedding.py): the same vectors as reading them one by one and embedding them
in one call, for any batch size, and an unreadable candidate skipped without losing the others."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dermground.platform.candidate_embedding import UnreadableCandidate, embed_candidates, read_point_image
from dermground.platform.embed import Embedder
from dermground.platform.embedder_provider import EmbedderProvider
from dermground.platform.images import DEFAULT_MAX_PIXELS

ATTRIBUTES = ("areaMM2", "deltaB")
N = 7


@pytest.fixture(scope="module")
def payloads(search_collection) -> list[dict[str, object]]:
    return [{"isic_id": r.isic_id, "image_ref": r.image_ref} for r in search_collection["records"][:N]]


def _serial(backbone, payloads) -> dict[str, np.ndarray]:
    """The path search took before: each image read in turn, then one embed call (batches of 4)."""
    images = [read_point_image(p, DEFAULT_MAX_PIXELS) for p in payloads]
    return Embedder(backbone).embed(images, list(ATTRIBUTES), include_image=False).h_im_a


@pytest.fixture(scope="module")
def serial(tiny_backbone, payloads) -> dict[str, np.ndarray]:
    return _serial(tiny_backbone, payloads)


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 1), (3, 2), (4, 3), (16, 2)])
def test_vectors_equal_the_serial_path(tiny_backbone, payloads, serial, batch_size, workers) -> None:
    # 3 does not divide the 7 candidates; 16 is more than there are (one batch of 7).
    provider = EmbedderProvider.of(Embedder(tiny_backbone, batch_size, 16 * batch_size))
    found = embed_candidates(provider, payloads, ATTRIBUTES, max_pixels=DEFAULT_MAX_PIXELS, workers=workers)
    assert found.skipped == [] and sorted(found.vectors) == list(range(N))
    assert found.batch_size == {1: 1, 3: 3, 4: 4, 16: N}[batch_size]  # 7 candidates: 7 x 1, 3+3+1, 4+3, 7
    for name in ATTRIBUTES:
        new = np.stack([found.vectors[i][f"q_{name}"] for i in range(N)])
        np.testing.assert_allclose(new, serial[name], rtol=0, atol=1e-5)


def test_unreadable_candidates_are_skipped_and_the_others_embedded(tiny_backbone, payloads, tmp_path,
                                                                    caplog) -> None:
    not_an_image = tmp_path / "not_an_image.jpg"
    not_an_image.write_bytes(b"these bytes are no JPEG")
    broken = list(payloads)
    broken[1] = {"isic_id": "ISIC_GONE", "image_ref": str(tmp_path / "missing.jpg")}
    broken[4] = {"isic_id": "ISIC_GARBLED", "image_ref": str(not_an_image)}
    broken[5] = {"isic_id": "ISIC_NO_REF"}
    provider = EmbedderProvider.of(Embedder(tiny_backbone, 2, 32))
    with caplog.at_level(logging.WARNING, logger="dermground.search"):
        found = embed_candidates(provider, broken, ATTRIBUTES, max_pixels=DEFAULT_MAX_PIXELS, workers=2)
    assert found.skipped == [1, 4, 5]
    readable = [0, 2, 3, 6]
    assert sorted(found.vectors) == readable
    expected = _serial(tiny_backbone, [payloads[i] for i in readable])
    for name in ATTRIBUTES:
        new = np.stack([found.vectors[i][f"q_{name}"] for i in readable])
        np.testing.assert_allclose(new, expected[name], rtol=0, atol=1e-5)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(who in warned for who in ("ISIC_GONE", "ISIC_GARBLED", "ISIC_NO_REF"))


def test_passes_are_evenly_filled(tiny_backbone, search_collection) -> None:
    records = search_collection["records"][:10]
    payloads = [{"isic_id": r.isic_id, "image_ref": r.image_ref} for r in records]
    provider = EmbedderProvider.of(Embedder(tiny_backbone, 4, 64))
    found = embed_candidates(provider, payloads, ATTRIBUTES[:1], max_pixels=DEFAULT_MAX_PIXELS)
    assert found.batch_size == 4 and len(found.vectors) == 10  # 10 at most 4 a pass: 3 passes of 4, 4, 2
    provider = EmbedderProvider.of(Embedder(tiny_backbone, 6, 96))
    assert embed_candidates(provider, payloads, ATTRIBUTES[:1], max_pixels=DEFAULT_MAX_PIXELS).batch_size == 5


def test_all_unreadable_or_none_gives_no_vectors(tiny_backbone, tmp_path) -> None:
    provider = EmbedderProvider.of(Embedder(tiny_backbone))
    assert embed_candidates(provider, [], ATTRIBUTES, max_pixels=DEFAULT_MAX_PIXELS).vectors == {}
    gone = [{"isic_id": f"ISIC_{i}", "image_ref": str(tmp_path / f"{i}.jpg")} for i in range(3)]
    found = embed_candidates(provider, gone, ATTRIBUTES, max_pixels=DEFAULT_MAX_PIXELS)
    assert found.vectors == {} and found.skipped == [0, 1, 2]


def test_read_point_image_names_the_point_and_the_reason(tmp_path) -> None:
    with pytest.raises(UnreadableCandidate, match="'ISIC_X'.*missing.jpg"):
        read_point_image({"isic_id": "ISIC_X", "image_ref": str(tmp_path / "missing.jpg")}, DEFAULT_MAX_PIXELS)
    with pytest.raises(UnreadableCandidate, match="no image_ref"):
        read_point_image({"isic_id": "ISIC_X"}, DEFAULT_MAX_PIXELS)



def _device_holding(images: int | None, backbone):  # noqa: ANN001, ANN202
    """A pre-hook on the vision tower that raises torch's out-of-memory error for a pass of more than
    `images` images (None: for every pass), as a card with that little free memory would."""
    import torch

    def check(_module, args, kwargs) -> None:  # noqa: ANN001
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if images is None or (grid is not None and len(grid) > images):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    return backbone.core.model.visual.register_forward_pre_hook(check, with_kwargs=True)


def test_a_pass_that_runs_out_of_device_memory_is_halved_until_it_fits(tiny_backbone, payloads, serial,
                                                                       caplog) -> None:
    provider = EmbedderProvider.of(Embedder(tiny_backbone, 8, 128))  # one batch of 7: 7 -> 3 + 4 -> 1 + 2, 2 + 2
    hook = _device_holding(2, tiny_backbone)
    try:
        with caplog.at_level(logging.WARNING, logger="dermground.search"):
            found = embed_candidates(provider, payloads, ATTRIBUTES, max_pixels=DEFAULT_MAX_PIXELS)
    finally:
        hook.remove()
    assert sorted(found.vectors) == list(range(N)) and found.skipped == []
    assert caplog.text.count("ran out of GPU memory") == 3  # the passes of 7, 3 and 4 were halved
    for name in ATTRIBUTES:
        new = np.stack([found.vectors[i][f"q_{name}"] for i in range(N)])
        np.testing.assert_allclose(new, serial[name], rtol=0, atol=1e-5)


def test_one_image_that_does_not_fit_is_not_retried(tiny_backbone, payloads) -> None:
    import torch

    hook = _device_holding(None, tiny_backbone)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            embed_candidates(EmbedderProvider.of(Embedder(tiny_backbone, 8, 128)), payloads[:1], ATTRIBUTES,
                             max_pixels=DEFAULT_MAX_PIXELS, workers=1)
    finally:
        hook.remove()
