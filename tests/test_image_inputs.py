"""Prepared images (ingest's CPU stage) give the model exactly what the processor gives it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dermground.platform.embed import Embedder
from dermground.platform.model.image_inputs import PreparedImage, prepare_pixels, rgb_images
from dermground.platform.model.shared_prefix import prefix_inputs
from dermground.platform.model.loading import load_processor
from dermground.platform.model.prompts import image_prefix
from tests.test_embed import lesion_image


@pytest.fixture(scope="module")
def mixed_images() -> list[Image.Image]:
    """Different sizes (so different grids and real padding) and the modes uploads come in."""
    square = lesion_image(1)
    return [square, lesion_image(2, size=(150, 96)), lesion_image(3).convert("RGBA"), lesion_image(4).convert("P"),
            lesion_image(5, size=(60, 200)).convert("L")]


def _assert_same_inputs(processor, images: list[Image.Image]) -> None:
    expected = processor(text=[image_prefix()] * len(images), images=rgb_images(images), padding=True,
                         return_tensors="pt")
    got = prefix_inputs(processor, prepare_pixels(processor.image_processor, images))
    assert set(got) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
    for key, value in got.items():
        assert value.dtype == expected[key].dtype, key
        assert torch.equal(value, expected[key]), key


def test_prepared_inputs_equal_the_processor_tiny_families(tiny_model_dir, tmp_path, mixed_images):
    from dermground.platform.model.tiny import save_tiny_model

    qwen25 = save_tiny_model(tmp_path / "qwen25", seed=0, family="qwen2_5_vl")
    for model_dir in (tiny_model_dir, qwen25):
        _assert_same_inputs(load_processor(model_dir), mixed_images)


def test_prepared_inputs_equal_the_processor_with_qwens_tokenizer(hub_checkpoints, mixed_images):
    # Qwen's real tokenizer (151k vocabulary, its own special tokens) and the hub's image processor config.
    _assert_same_inputs(load_processor(hub_checkpoints("qwen2_vl")), mixed_images)


def test_each_prepared_image_keeps_its_own_patches(tiny_backbone, mixed_images):
    processor = tiny_backbone.processor
    batch = prepare_pixels(processor.image_processor, mixed_images)
    one_by_one = [prepare_pixels(processor.image_processor, [image])[0] for image in mixed_images]
    assert len({p.grid_thw for p in batch}) > 1  # the images really have different grids
    for together, alone in zip(batch, one_by_one, strict=True):
        assert together.grid_thw == alone.grid_thw
        assert together.pixel_values.dtype == np.float32
        np.testing.assert_array_equal(together.pixel_values, alone.pixel_values)


def test_embedding_prepared_images_equals_embedding_the_images(tiny_backbone, mixed_images):
    embedder = Embedder(tiny_backbone, batch_size=3)
    direct = embedder.embed(mixed_images)
    prepared = embedder.embed_prepared(prepare_pixels(tiny_backbone.processor.image_processor, mixed_images))
    np.testing.assert_array_equal(prepared.h_im, direct.h_im)
    for name, vectors in direct.h_im_a.items():
        np.testing.assert_array_equal(prepared.h_im_a[name], vectors)
    # Not vacuous: another image's patches give another vector.
    swapped = prepare_pixels(tiny_backbone.processor.image_processor, [mixed_images[1], *mixed_images[1:]])
    assert not np.allclose(embedder.embed_prepared(swapped).h_im[0], direct.h_im[0])


def test_a_prepared_image_must_match_its_grid():
    with pytest.raises(ValueError, match="do not match the grid"):
        PreparedImage(np.zeros((10, 1176), dtype=np.float32), (1, 4, 4))
    with pytest.raises(ValueError, match="needs at least one image"):
        prefix_inputs(None, [])  # type: ignore[arg-type]


# --- the CPU stage's numpy recipe ---------------------------------------------------------------
def _recipe_cases() -> list[Image.Image]:
    """Upscaled, kept, downscaled (past the tiny model's max pixels), odd aspect, grey, alpha, palette."""
    return [lesion_image(10, size=(20, 30)), lesion_image(11), lesion_image(12, size=(150, 96)),
            lesion_image(13, size=(700, 500)), lesion_image(14, size=(61, 203)).convert("L"),
            lesion_image(15, size=(99, 101)).convert("RGBA"), lesion_image(16, size=(57, 57)).convert("P")]


def _assert_recipe_matches(model_dir) -> None:
    from dermground.platform.model.patch_recipe import PatchRecipe

    image_processor = load_processor(model_dir).image_processor
    recipe = PatchRecipe.from_model_dir(model_dir)
    assert recipe == PatchRecipe.from_image_processor(image_processor)
    for image in _recipe_cases():
        expected = prepare_pixels(image_processor, [image])[0]
        got = recipe.prepare(image)
        assert got.grid_thw == expected.grid_thw, image.size
        assert got.pixel_values.dtype == expected.pixel_values.dtype
        np.testing.assert_array_equal(got.pixel_values, expected.pixel_values, err_msg=str(image.size))


def test_the_numpy_recipe_is_bit_identical_to_the_processor_tiny_families(tiny_model_dir, tmp_path):
    from dermground.platform.model.tiny import save_tiny_model

    for model_dir in (tiny_model_dir, save_tiny_model(tmp_path / "qwen25", seed=0, family="qwen2_5_vl")):
        _assert_recipe_matches(model_dir)


def test_the_numpy_recipe_is_bit_identical_to_the_processor_hub_folder(hub_checkpoints):
    _assert_recipe_matches(hub_checkpoints("qwen2_vl"))  # preprocessor_config.json, Qwen's published numbers


def test_the_recipe_reads_settings_and_refuses_what_it_cannot_reproduce(tmp_path):
    from dermground.platform.model.patch_recipe import PatchRecipe, RecipeUnsupported

    recipe = PatchRecipe.from_settings({"min_pixels": 100, "max_pixels": 5000, "size": {"shortest_edge": 1}})
    assert (recipe.min_pixels, recipe.max_pixels, recipe.patch_size, recipe.resample) == (100, 5000, 14, 3)
    assert PatchRecipe.from_settings({"size": {"shortest_edge": 784, "longest_edge": 3136}}).max_pixels == 3136
    with pytest.raises(RecipeUnsupported, match="do_normalize"):
        PatchRecipe.from_settings({"do_normalize": False})
    with pytest.raises(RecipeUnsupported, match="no processor_config.json"):
        PatchRecipe.from_model_dir(tmp_path)
    with pytest.raises(ValueError, match="aspect ratio"):
        recipe.prepare(Image.new("RGB", (201, 1)))
