"""Dihedral views of a crop: as PIL images, as processed Qwen2-VL patches, and per training epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dermground.platform.model.processor import fixed_size_image_processor
from dermground.platform.model.views import MAX_VIEWS, dihedral_view, turn_patches
from dermground.train.loop import epoch_views


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (112, 112, 3), dtype=np.uint8))


def test_the_first_1_2_4_and_8_views_are_groups_of_distinct_images(image):
    views = [dihedral_view(image, v).tobytes() for v in range(MAX_VIEWS)]
    assert len(set(views)) == MAX_VIEWS and views[0] == image.tobytes()
    for n in (1, 2, 4, 8):  # closed under composition: n views are a whole group, never a lopsided subset
        for a in range(n):
            for b in range(n):
                assert dihedral_view(dihedral_view(image, a), b).tobytes() in views[:n], (n, a, b)
    with pytest.raises(ValueError, match="view"):
        dihedral_view(image, MAX_VIEWS)


@pytest.mark.parametrize("view", range(MAX_VIEWS))
def test_turned_patches_equal_the_patches_of_the_turned_image(image, view):
    processor = fixed_size_image_processor(112)
    processed = processor(images=[image], return_tensors="pt")
    expected = processor(images=[dihedral_view(image, view)], return_tensors="pt")
    for grid in (processed["image_grid_thw"], processed["image_grid_thw"][0]):  # (1, 3) and the collator's (3,)
        pixels, turned_grid = turn_patches(processed["pixel_values"], grid, view)
        assert torch.equal(pixels, expected["pixel_values"]), view
        assert turned_grid.shape == grid.shape and torch.equal(turned_grid.reshape(3), expected["image_grid_thw"][0])
    if view:
        assert not torch.equal(expected["pixel_values"], processed["pixel_values"])


def test_turn_patches_rejects_what_is_not_one_image(image):
    processed = fixed_size_image_processor(112)(images=[image, image], return_tensors="pt")
    with pytest.raises(ValueError, match="one image"):
        turn_patches(processed["pixel_values"], processed["image_grid_thw"], 1)
    with pytest.raises(ValueError, match="do not match"):
        turn_patches(processed["pixel_values"], processed["image_grid_thw"][:1], 1)


def test_epoch_views_are_reproducible_in_range_and_change_between_epochs():
    assert epoch_views(50, seed=1, epoch=0, views=1) == [0] * 50
    first = epoch_views(400, seed=1, epoch=0, views=8)
    assert first == epoch_views(400, seed=1, epoch=0, views=8)
    assert set(first) == set(range(8))  # every view is used
    assert first != epoch_views(400, seed=1, epoch=1, views=8) != epoch_views(400, seed=2, epoch=1, views=8)
    assert set(epoch_views(400, seed=1, epoch=0, views=2)) == {0, 1}


def test_an_encoded_training_example_in_a_view_keeps_its_text_and_turns_its_patches(tiny_backbone, image):
    from dermground.train.collator import AnswerOnlyCollator

    example = AnswerOnlyCollator(tiny_backbone.processor).encode(image, "What is the area of the lesion in mm²?", "12.3")
    assert example.in_view(0) is example
    turned = example.in_view(4)
    expected, grid = turn_patches(example.pixel_values, example.image_grid_thw, 4)
    assert torch.equal(turned.pixel_values, expected) and torch.equal(turned.image_grid_thw, grid)
    assert turned.tokens is example.tokens and turned.labels is example.labels
