"""The model-busy accounting of ingest (ingest/model_busy.py): sums are exact, shares stay in [0, 1]."""

from __future__ import annotations

import time

import numpy as np

from dermground.ingest.model_busy import ModelBusy


def batch(actor: str, rows: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """An actor's output batch: each row carries its share of the batch's model seconds."""
    return np.full(rows, actor, dtype=object), np.full(rows, seconds / rows)


def test_model_seconds_add_up_and_the_steady_state_leaves_out_each_actors_first_batch() -> None:
    busy = ModelBusy()
    clock = busy.wave(configured_actors=2)
    clock.observe(*batch("a", 4, 0.004))
    clock.observe(*batch("b", 2, 0.002))
    time.sleep(0.01)  # some wall time between batches, so the spans are not zero
    clock.observe(*batch("a", 4, 0.004))
    clock.observe(*batch("a", 3, 0.003))
    clock.finish()
    assert abs(busy.model_seconds - 0.013) < 1e-12
    assert abs(busy.steady_model_seconds - 0.007) < 1e-12  # a's second and third batches
    assert busy.actors == 2
    assert busy.actor_seconds >= 2 * 0.01  # two actors for the wave's wall time
    assert 0 < busy.fraction < 1 and busy.steady_fraction is not None
    assert "2 actor(s)" in busy.describe()


def test_waves_accumulate_and_more_actors_than_configured_count() -> None:
    busy = ModelBusy()
    for _ in range(2):
        clock = busy.wave(configured_actors=1)
        clock.observe(*batch("x", 2, 0.001))
        clock.observe(*batch("y", 2, 0.001))  # an actor Ray Data added: its time counts too
        clock.finish()
    assert abs(busy.model_seconds - 0.004) < 1e-12
    assert busy.actors == 2
    assert busy.steady_fraction is None  # no actor sent two batches in one wave


def test_a_run_that_embedded_nothing_says_so() -> None:
    assert ModelBusy().fraction is None
    assert ModelBusy().describe() == "model busy: nothing embedded"
