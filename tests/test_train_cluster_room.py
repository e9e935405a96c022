"""A training run that a local Ray can never place is refused instead of waiting forever."""

from __future__ import annotations

import pytest

from dermground.train.cluster_room import room_problem


def test_more_cpus_than_the_local_ray_has_is_refused_with_the_numbers_that_fit(ray_session, tiny_model_dir, tmp_path):
    """--cpus-per-worker 3 on a 2-CPU Ray: Ray Train waited for the resources forever, silently, after
    "Started a local Ray instance" (reproduced: killed after 150 s). Now refused before any worker starts."""
    from dermground.ingest.synth import generate_dataset
    from dermground.train.config import TrainConfig
    from dermground.train.ray_train import train_adapter

    data = tmp_path / "data"
    generate_dataset(data, patients=2, images=4, seed=3, size=64, progress=False, workers=1)
    cpus = int(ray_session.cluster_resources()["CPU"])
    with pytest.raises(ValueError, match=rf"--cpus-per-worker {cpus + 1} needs {cpus + 1} CPUs but the Ray cluster "
                                         rf"has {cpus}; pass --cpus-per-worker {cpus} .*forever"):
        train_adapter(data, tiny_model_dir, tmp_path / "adapter", TrainConfig(max_steps=1, batch_size=2),
                      cpus_per_worker=cpus + 1, progress=False)
    assert not (tmp_path / "adapter" / "adapter_config.json").exists()


def test_room_problems_name_the_flags_that_fit():
    assert room_problem(2, 1, False, {"CPU": 2.0}) is None
    assert "pass --workers 2 or fewer" in room_problem(4, 1, False, {"CPU": 2.0})
    assert "needs 2 GPUs but the Ray cluster has 1; pass --workers 1" in room_problem(2, 1, True, {"CPU": 8.0, "GPU": 1.0})
    assert "leave --gpu out" in room_problem(1, 1, True, {"CPU": 8.0})
