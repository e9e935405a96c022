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
