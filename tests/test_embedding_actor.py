"""The embedding actor's batch shapes: one suffix pass per batch on a GPU, the Embedder's default on a CPU."""

from __future__ import annotations

from dermground.ingest.embedding_actor import suffix_rows
from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.embed import DEFAULT_SUFFIX_BATCH


def test_on_a_gpu_every_question_of_a_batch_goes_in_one_suffix_pass() -> None:
    assert suffix_rows(16, "cuda") == 16 * len(ATTRIBUTES) == 256  # the 2B's fastest on an H100: 16:256
    assert suffix_rows(8, "cuda") == 128  # the 7B's: 8:128


def test_on_a_cpu_the_suffix_pass_keeps_the_embedders_default() -> None:
    assert suffix_rows(16, "cpu") == suffix_rows(2, "cpu") == DEFAULT_SUFFIX_BATCH == 64


def test_every_question_rows_counts_each_attribute_of_each_image() -> None:
    from dermground.platform.embed import every_question_rows

    assert [every_question_rows(n) for n in (1, 3)] == [len(ATTRIBUTES), 3 * len(ATTRIBUTES)]


# --- image patches in the model's dtype (platform/model/patch_dtype.py) ------------------------
def _stage_batch(tmp_path, n: int = 3) -> dict:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    refs = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (90 + 10 * i, 120, 3), dtype=np.uint8)).save(path)
        refs.append(str(path))
    return {"isic_id": np.array([f"ISIC_{i}" for i in range(n)], dtype=object),
            "image_ref": np.array(refs, dtype=object), "part": np.zeros(n, dtype=np.int64)}


def test_a_bfloat16_model_embeds_bfloat16_patches_exactly_as_float32_ones(tiny_model_dir, tmp_path) -> None:
    # The CPU stage rounds the patches as the model itself did: same vectors, half the bytes in transit.
    import numpy as np

    from dermground.ingest.embedding_actor import EmbeddingActor
    from dermground.ingest.image_prep import prepare_images
    from dermground.platform.model.fingerprint import fingerprint

    batch = _stage_batch(tmp_path)
    as_float32 = prepare_images(batch, str(tiny_model_dir), patch_dtype="float32")
    as_bfloat16 = prepare_images(batch, str(tiny_model_dir), patch_dtype="bfloat16")
    assert {row.dtype for row in as_bfloat16["pixel_values"]} == {np.dtype(np.uint16)}
    sent_bytes = {name: sum(row.nbytes for row in batch["pixel_values"])
                  for name, batch in (("float32", as_float32), ("bfloat16", as_bfloat16))}
    assert sent_bytes["bfloat16"] * 2 == sent_bytes["float32"]
    arguments = {"model_dir": str(tiny_model_dir), "adapter_dir": None,
                 "expected_fingerprint": fingerprint(tiny_model_dir, None), "device": "cpu", "dtype": "bfloat16"}
    sent_rounded = EmbeddingActor(**arguments, patch_dtype="bfloat16")(as_bfloat16)
    sent_float32 = EmbeddingActor(**arguments, patch_dtype="float32")(as_float32)
    assert list(sent_rounded["error"]) == ["", "", ""]
    np.testing.assert_array_equal(sent_rounded["vectors"], sent_float32["vectors"])
    assert np.abs(sent_rounded["vectors"]).sum(axis=2).min() > 0


def test_patches_rounded_for_another_dtype_are_refused(tiny_model_dir, tmp_path) -> None:
    import pytest

    from dermground.ingest.embedding_actor import EmbeddingActor
    from dermground.ingest.image_prep import prepare_images
    from dermground.platform.model.fingerprint import fingerprint

    arguments = {"model_dir": str(tiny_model_dir), "adapter_dir": None,
                 "expected_fingerprint": fingerprint(tiny_model_dir, None), "device": "cpu"}
    # A float32 model cannot take bfloat16 patches: widening them back loses what rounding lost.
    with pytest.raises(RuntimeError, match="runs in torch.float32"):
        EmbeddingActor(**arguments, dtype="float32", patch_dtype="bfloat16")
    # An actor never reads patches of another dtype than agreed (bit patterns are not numbers).
    actor = EmbeddingActor(**arguments, dtype="bfloat16", patch_dtype="bfloat16")
    with pytest.raises(RuntimeError, match="arrived as float32"):
        actor(prepare_images(_stage_batch(tmp_path), str(tiny_model_dir), patch_dtype="float32"))
