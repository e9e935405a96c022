"""EdgeStore.upsert's fast path (vectors checked once stacked, handed to the engine as memoryviews)
stores what the engine stored from numpy vectors and refuses bad points with the per-vector
checks' errors."""

from __future__ import annotations

import numpy as np
import pytest

from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.store import (
    DEFAULT_VECTOR_NAMES,
    CollectionSpec,
    StoreError,
    StorePoint,
    VectorStore,
    build_payload,
    point_id,
)
from dermground.platform.store.edge import EdgeStore, float_rows, qe
from dermground.platform.store.schema import PAYLOAD_INDEXES

DIM, FP = 16, "fp-upsert"
SPEC = CollectionSpec(dim=DIM, fingerprint=FP)


def _points(n: int, dtype: type = np.float32, seed: int = 3, first: int = 0) -> list[StorePoint]:
    rng = np.random.default_rng(seed)
    points = []
    for i in range(first, first + n):
        record: dict[str, object] = {"isic_id": f"ISIC_{i:07d}", "patient_id": f"IP_{i % 4}", "split": "train",
                                     "image_ref": f"img/{i}.jpg"}
        record |= {a.name: float(rng.uniform(a.low, a.high)) for a in ATTRIBUTES}
        stacked = rng.normal(size=(len(DEFAULT_VECTOR_NAMES), DIM)).astype(dtype)
        points.append(StorePoint(point_id(str(record["isic_id"])),
                                 {name: stacked[k] for k, name in enumerate(DEFAULT_VECTOR_NAMES)},
                                 build_payload(record, FP)))
    return points


# Module-wide collections: creating one takes 0.3 s on a quiet machine, seconds on a loaded one.
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    with EdgeStore(tmp_path_factory.mktemp("fast") / "store", "fast") as s:
        s.ensure_collection(SPEC)
        yield s


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """Where points go the previous way: numpy vectors handed to the engine as they are."""
    with EdgeStore(tmp_path_factory.mktemp("numpy") / "store", "numpy") as s:
        s.ensure_collection(SPEC)
        yield s


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_stores_the_values_numpy_vectors_stored(store: EdgeStore, reference: EdgeStore, dtype: type) -> None:
    points = _points(12, dtype, seed=12 if dtype is np.float32 else 64)
    store.upsert(points)
    reference._update(qe.UpdateOperation.upsert_points(
        [qe.Point(id=p.id, vector=dict(p.vectors), payload=p.payload) for p in points]), "upsert")
    ids = [p.id for p in points]
    expected = reference.retrieve(ids, with_payload=True, with_vectors=True)
    stored = store.retrieve(ids, with_payload=True, with_vectors=True)
    assert [p.id for p in stored] == ids
    for got, want in zip(stored, expected, strict=True):
        assert got.payload == want.payload
        assert set(got.vectors) == set(DEFAULT_VECTOR_NAMES)
        for name in DEFAULT_VECTOR_NAMES:
            np.testing.assert_array_equal(got.vectors[name], want.vectors[name])


def _spoil(points: list[StorePoint], index: int, how: str) -> None:
    point = points[index]
    if how == "nan":
        point.vectors["image"] = point.vectors["image"].copy()
        point.vectors["image"][3] = np.nan
    elif how == "inf":
        point.vectors["q_areaMM2"] = np.full(DIM, np.inf, dtype=np.float32)
    elif how == "short":
        point.vectors["image"] = np.ones(DIM - 1, dtype=np.float32)
    elif how == "matrix":
        point.vectors["image"] = np.ones((1, DIM), dtype=np.float32)
    elif how == "unknown name":
        point.vectors["nope"] = np.ones(DIM, dtype=np.float32)
    elif how == "fingerprint":
        point.payload["fingerprint"] = "another-model"
    elif how == "text":
        point.vectors["image"] = np.array(["x"] * DIM)


BAD_POINTS = [
    [(4, "nan")], [(0, "inf")], [(7, "short")], [(2, "matrix")], [(5, "unknown name")], [(1, "fingerprint")],
    [(6, "text")],
    # Several faults: the first point at fault is named, whatever its fault.
    [(3, "nan"), (5, "unknown name")], [(5, "nan"), (2, "fingerprint")], [(2, "short"), (1, "fingerprint")],
    [(1, "fingerprint"), (2, "fingerprint")],
]


@pytest.mark.parametrize("faults", BAD_POINTS, ids=lambda f: "+".join(f"{i}:{h}" for i, h in f))
def test_bad_points_get_the_per_vector_checks_error_and_nothing_is_stored(
        store: EdgeStore, faults: list[tuple[int, str]]) -> None:
    points = _points(8, first=1000)  # ids no other test writes
    for index, how in faults:
        _spoil(points, index, how)
    with pytest.raises(Exception) as per_vector:  # noqa: PT011 - the type is compared below
        VectorStore._check_points(store, SPEC, points)
    with pytest.raises(type(per_vector.value)) as fast:
        store.upsert(points)
    assert str(fast.value) == str(per_vector.value)
    first = 1000 + min(faults)[0]
    if not isinstance(per_vector.value, TypeError):  # numpy's own error for text vectors names nothing
        assert isinstance(per_vector.value, StoreError)
        assert f"ISIC_{first:07d}" in str(fast.value)
    assert store.retrieve([p.id for p in points]) == []


def test_update_vectors_takes_the_same_path(store: EdgeStore, reference: EdgeStore) -> None:
    points = _points(4, first=2000)
    for target in (store, reference):
        target.upsert(points)
    fresh = {p.id: {"q_A": p.vectors["image"] * 2.0, "q_B": p.vectors["q_A"]} for p in points}
    store.update_vectors(fresh)
    reference._update(qe.UpdateOperation.update_vectors(
        [qe.PointVectors(id=pid, vector=dict(named)) for pid, named in fresh.items()]), "vector update")
    ids = list(fresh)
    expected = reference.retrieve(ids, with_vectors=True)
    for got, want in zip(store.retrieve(ids, with_vectors=True), expected, strict=True):
        for name in DEFAULT_VECTOR_NAMES:
            np.testing.assert_array_equal(got.vectors[name], want.vectors[name])
    spoiled = dict(fresh)
    spoiled[ids[2]] = {"q_A": np.full(DIM, np.nan, dtype=np.float32)}
    with pytest.raises(StoreError, match=f"point {ids[2]!r} vector 'q_A' has NaN/inf values"):
        store.update_vectors(spoiled)


def test_partial_integer_and_half_precision_vectors_are_still_accepted(store: EdgeStore) -> None:
    points = _points(4)
    points[0].vectors = {"image": points[0].vectors["image"]}  # a point may carry only some vectors
    points[1].vectors = {name: np.arange(DIM) + 1 for name in DEFAULT_VECTOR_NAMES}
    assert float_rows(SPEC, [points[1].vectors]) is None  # integers alone: the per-vector path
    points[3].vectors = {name: v.astype(np.float16) for name, v in points[3].vectors.items()}
    assert float_rows(SPEC, [points[3].vectors]) is None
    store.upsert(points)
    stored = {p.id: p for p in store.retrieve([p.id for p in points], with_payload=False, with_vectors=True)}
    assert set(stored[points[0].id].vectors) == {"image"}
    expected = (np.arange(DIM) + 1) / np.linalg.norm(np.arange(DIM) + 1)  # cosine: stored normalised
    np.testing.assert_allclose(stored[points[1].id].vectors["q_areaMM2"], expected, rtol=1e-6)
    assert len(stored[points[2].id].vectors) == len(DEFAULT_VECTOR_NAMES)
    half = points[3].vectors["image"].astype(np.float32)
    np.testing.assert_allclose(stored[points[3].id].vectors["image"], half / np.linalg.norm(half), rtol=1e-6)


def test_float_rows_keep_each_points_names_in_order() -> None:
    points = _points(3)
    points[1].vectors = {"q_areaMM2": points[1].vectors["q_areaMM2"], "image": points[1].vectors["image"]}
    rows = float_rows(SPEC, [p.vectors for p in points])
    assert rows is not None
    for point, named in zip(points, rows, strict=True):
        assert list(named) == list(point.vectors)
        for name, values in named.items():
            assert list(values) == point.vectors[name].tolist()


def test_a_new_collection_has_every_payload_index_of_the_schema(store: EdgeStore) -> None:
    kinds = {"keyword": qe.PayloadSchemaType.Keyword, "integer": qe.PayloadSchemaType.Integer,
             "float": qe.PayloadSchemaType.Float}
    schema = store._require_shard().info().payload_schema
    assert {field: info.data_type for field, info in schema.items()} == {
        field: kinds[kind] for field, kind in PAYLOAD_INDEXES.items()}
    assert store.describe() == SPEC
