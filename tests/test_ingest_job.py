"""The ingest job: one checked, frozen description of a run that the CLI builds and the pipeline reads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dermground.ingest.job import IngestJob, IngestOptions
from dermground.platform.names import InvalidNameError
from dermground.platform.settings import load_settings


def test_build_resolves_defaults_from_the_settings(tmp_path: Path):
    settings = load_settings(home=tmp_path / "home").model_copy(
        update={"adapter_dir": tmp_path / "adapter", "ray_address": "auto", "max_image_pixels": 4096})
    job = IngestJob.build(tmp_path / "data", "lesions", settings)

    assert job.model_dir == settings.base_model_dir
    assert job.adapter_dir == tmp_path / "adapter"
    assert job.ray_address == "auto"
    assert job.options == IngestOptions(device=settings.device, dtype=settings.dtype)
    assert job.reader_split == "train"
    assert job.source == str((tmp_path / "data").resolve())
    args = job.actor_arguments("fp", threads=0)
    assert args["num_threads"] == 1 and args["adapter_dir"] == str(tmp_path / "adapter")
    prep = job.prep_arguments()
    assert prep == {"model_dir": str(settings.base_model_dir), "max_pixels": 4096, "patch_dtype": "float32"}
    json.loads(json.dumps(args)), json.loads(json.dumps(prep))  # plain values only: they travel to Ray workers
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.collection = "other"  # type: ignore[misc]


def test_build_keeps_explicit_values_and_applies_the_index_threshold(tmp_path: Path):
    settings = load_settings(home=tmp_path / "home")
    job = IngestJob.build(tmp_path / "data", "c1", settings, model_dir=tmp_path / "m", split="all", batch_size=3,
                          actors=2, cpus_per_actor=1.5, partition_size=5, new_version=True, index_min_points=0)

    assert (job.model_dir, job.options.split, job.reader_split) == (tmp_path / "m", "all", None)
    assert (job.options.batch_size, job.options.actors, job.options.cpus_per_actor) == (3, 2, 1.5)
    assert job.options.partition_size == 5 and job.new_version
    assert job.settings.store_index_min_points == 0
    assert settings.store_index_min_points != 0  # the caller's settings are left alone


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"collection": "../x"}, InvalidNameError, "collection name"),
    ({"split": "val"}, ValueError, "split"),
    ({"actors": 0}, ValueError, "actors"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"partition_size": 0}, ValueError, "partition size"),
    ({"index_min_points": -1}, ValueError, "index_min_points"),
])
def test_build_refuses_bad_values_before_anything_runs(tmp_path: Path, kwargs, error, words):
    arguments = {"data_dir": tmp_path, "collection": "lesions", "settings": load_settings(home=tmp_path / "h"),
                 **kwargs}
    with pytest.raises(error, match=words):
        IngestJob.build(**arguments)
    assert not (tmp_path / "h").exists()
