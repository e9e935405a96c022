"""The model-busy accounting of ingest (ingest/model_busy.py): sums are exact, shares stay in [0, 1]."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dermground.ingest.model_busy import ModelBusy


def batch(actor: str, rows: int, seconds: float, finished: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An actor's output batch: each row carries its share of the batch's model seconds and the batch's end."""
    return np.full(rows, actor, dtype=object), np.full(rows, seconds / rows), np.full(rows, finished)


def test_the_steady_state_is_timed_on_the_actors_clock_from_the_end_of_its_first_batch() -> None:
    busy = ModelBusy()
    clock = busy.wave(configured_actors=2)
    time.sleep(0.01)  # some wall time for the wave, so its actor seconds are not zero
    clock.observe(*batch("a", 4, 0.004, finished=100.000))
    clock.observe(*batch("b", 2, 0.002, finished=100.001))
    clock.observe(*batch("a", 4, 0.008, finished=100.010))
    clock.observe(*batch("a", 3, 0.006, finished=100.020))
    clock.finish()
    assert busy.model_seconds == pytest.approx(0.020)
    assert busy.steady_model_seconds == pytest.approx(0.014)  # a's second and third batches
    assert busy.steady_actor_seconds == pytest.approx(0.020)  # from a's first batch's end to its last's
    assert busy.steady_fraction == pytest.approx(0.7)
    assert busy.actors == 2 and busy.actor_seconds >= 2 * 0.01
    assert 0 < busy.fraction <= 1
    assert "2 actor(s)" in busy.describe() and "(70% after each actor's first batch)" in busy.describe()


def test_a_block_of_batches_received_at_once_does_not_inflate_the_share() -> None:
    # Ray Data hands the driver several batches in one block: one observe call, rows of 3 batches.
    busy = ModelBusy()
    clock = busy.wave(configured_actors=1)
    actors, seconds, finished = (np.concatenate(parts) for parts in zip(
        batch("a", 2, 0.5, 10.0), batch("a", 2, 0.5, 10.5), batch("a", 2, 0.5, 11.0), strict=True))
    clock.observe(actors, seconds, finished)
    clock.finish()
    assert busy.steady_fraction == pytest.approx(1.0)  # busy the whole second between its first batch's end and its last's


def test_waves_accumulate_and_more_actors_than_configured_count() -> None:
    busy = ModelBusy()
    for start in (0.0, 50.0):
        clock = busy.wave(configured_actors=1)
        clock.observe(*batch("x", 2, 0.001, start + 1))
        clock.observe(*batch("y", 2, 0.001, start + 2))  # an actor Ray Data added: its time counts too
        clock.finish()
    assert busy.model_seconds == pytest.approx(0.004)
    assert busy.actors == 2
    assert busy.steady_fraction is None  # no actor sent two batches in one wave


def test_a_run_that_embedded_nothing_says_so() -> None:
    assert ModelBusy().fraction is None
    assert ModelBusy().describe() == "model busy: nothing embedded"
