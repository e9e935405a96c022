"""The embedded store's HNSW index: built at ingest's finish past a threshold, same answers, validated options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.settings import SettingsError, load_settings
from dermground.platform.store import CollectionSpec, SearchFilter, StorePoint, build_payload, open_store, point_id
from dermground.platform.store.edge import EdgeStore
from dermground.platform.store.indexing import (
    DEFAULT_HNSW_EF,
    DEFAULT_INDEX_MIN_POINTS,
    build_index_if_large,
    check_index_min_points,
    search_params,
)


def _points(n: int, dim: int, seed: int = 0) -> list[StorePoint]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    points = []
    for i in range(n):
        record = {"isic_id": f"ISIC_{i:07d}", "patient_id": f"IP_{i % 50:05d}", "split": ("train", "test")[i % 2],
                  "image_ref": f"hdf5:x.hdf5#ISIC_{i:07d}", "age_approx": float(20 + i % 60)}
        record |= {a.name: a.low for a in ATTRIBUTES}
        points.append(StorePoint(point_id(f"ISIC_{i:07d}"), {"image": vectors[i]}, build_payload(record, "fp")))
    return points


def _top10(store: EdgeStore, queries: np.ndarray, flt: SearchFilter | None) -> list[list[str]]:
    return [[h.id for h in store.query("image", q, 10, flt, with_payload=False)] for q in queries]


def test_the_index_is_built_only_past_the_threshold_and_search_answers_stay_the_same(tmp_path: Path) -> None:
    spec = CollectionSpec(dim=32, fingerprint="fp", vector_names=("image",), hnsw_on=("image",))
    queries = np.random.default_rng(1).normal(size=(15, 32)).astype(np.float32)
    filters = (None, SearchFilter(split="train"), SearchFilter(equals={"patient_id": "IP_00007"}))
    with EdgeStore(tmp_path / "c", "c", hnsw_ef=64, index_min_points=200) as store:
        store.ensure_collection(spec)
        store.upsert(_points(300, 32))
        before = {i: _top10(store, queries, f) for i, f in enumerate(filters)}

        assert build_index_if_large(store, 0).built is False  # 0 = never
        below = build_index_if_large(store, 301)
        assert (below.built, below.indexed_points) == (False, 0)
        assert "search stays exact" in below.reason

        report = build_index_if_large(store, 200)
        assert report.built and report.points == 300 and report.indexed_points == 300
        after = {i: _top10(store, queries, f) for i, f in enumerate(filters)}
        assert build_index_if_large(store, 200).built is False  # nothing new to index
    assert after == before
    # The index and the engine's threshold survive a reopen.
    with EdgeStore(tmp_path / "c", "c") as reopened:
        assert reopened.indexed_points() == 300
        assert _top10(reopened, queries, filters[1]) == before[1]


def test_searches_through_the_graph_find_nearly_the_exact_neighbours(tmp_path: Path) -> None:
    # 2,600 vectors of 1,024 floats pass the engine's full-scan threshold (10,000 KB), so an
    # unfiltered search walks the HNSW graph instead of scoring every point.
    n, dim = 2600, 1024
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    spec = CollectionSpec(dim=dim, fingerprint="fp", vector_names=("image",), hnsw_on=("image",))
    with EdgeStore(tmp_path / "g", "g", hnsw_ef=128, index_min_points=1000) as store:
        store.ensure_collection(spec)
        ids = [point_id(f"I{i}") for i in range(n)]
        store.upsert([StorePoint(ids[i], {"image": vectors[i]}, {"isic_id": f"I{i}"}) for i in range(n)])
        assert build_index_if_large(store, 1000).built
        queries = vectors[rng.choice(n, size=20, replace=False)] + 0.5 * rng.normal(size=(20, dim)).astype(np.float32)
        row = {pid: i for i, pid in enumerate(ids)}
        found = [{row[h.id] for h in store.query("image", q, 10, with_payload=False)} for q in queries]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = [set(np.argsort(-(unit @ q))[:10].tolist()) for q in queries]
    recall = np.mean([len(f & e) / 10 for f, e in zip(found, exact)])
    assert recall >= 0.9


def test_the_index_options_are_validated() -> None:
    for bad in (-1, 2.5, "10", True):
        with pytest.raises(ValueError, match="index_min_points"):
            check_index_min_points(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hnsw_ef"):
        search_params(0)
    defaults = load_settings()
    assert (defaults.store_index_min_points, defaults.store_hnsw_ef) == (DEFAULT_INDEX_MIN_POINTS, DEFAULT_HNSW_EF)
    with pytest.raises(SettingsError, match="STORE_INDEX_MIN_POINTS"):
        load_settings(store_index_min_points=-5)
    with pytest.raises(SettingsError, match="STORE_HNSW_EF"):
        load_settings(store_hnsw_ef=0)


def test_the_cli_refuses_a_negative_threshold(tmp_path: Path) -> None:
    from dermground.platform.cli import cli

    result = CliRunner().invoke(cli, ["ingest", "--data", str(tmp_path), "--index-min-points", "-1"])
    assert result.exit_code == 2 and "--index-min-points" in result.output


def test_ingest_builds_the_index_at_its_finish_once_the_collection_is_large_enough(
        tiny_model_dir, ray_session, tmp_path: Path) -> None:
    from dermground.ingest.pipeline import ingest_dataset
    from dermground.ingest.synth import generate_dataset

    data = tmp_path / "data"
    # Below the threshold nothing is built (test above); here 24 points pass a threshold of 20.
    generate_dataset(data, patients=4, images=24, seed=5, size=112, progress=False, workers=1)
    settings = load_settings(home=tmp_path / "home")
    with pytest.raises(ValueError, match="index_min_points"):
        ingest_dataset(data, "small", settings, model_dir=tiny_model_dir, index_min_points=-1, progress=False)
    done = ingest_dataset(data, "big", settings, model_dir=tiny_model_dir, split="all", batch_size=4,
                          progress=False, index_min_points=20)
    assert done.ingested == 24 and done.index is not None and done.index.built
    assert done.index.indexed_points == 24 and done.index.seconds > 0
    with open_store(settings, "big") as store:
        hits = store.query("image", np.ones(store.require_spec().dim, dtype=np.float32), 5)
        assert len(hits) == 5
