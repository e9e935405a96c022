"""One contract for every vector store backend: same inputs, same results (checked against numpy).

EdgeStore runs in tmp_path (the real embedded engine), ServerStore in qdrant-client ":memory:" mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.store import (
    DEFAULT_VECTOR_NAMES,
    CollectionSpec,
    Range,
    SchemaMismatchError,
    SearchFilter,
    StoreError,
    StoreLockedError,
    StorePoint,
    VectorStore,
    build_payload,
    open_store,
    point_id,
)
from dermground.platform.settings import Settings
from dermground.platform.store.edge import EdgeStore
from dermground.platform.store.server import ServerStore
from tests.store_holder import held_by_another_process

N, DIM, FP = 300, 32, "fp-test-1"
SPEC = CollectionSpec(dim=DIM, fingerprint=FP)
SITES = ("head/neck", "upper extremity", "lower extremity", "anterior torso", "posterior torso")


def _records(seed: int = 7) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(N):
        record: dict[str, object] = {
            "isic_id": f"ISIC_{i:07d}", "patient_id": f"IP_{i % 40:04d}",
            "split": ("train", "val", "test")[i % 3], "image_ref": f"hdf5:train-image.hdf5#ISIC_{i:07d}",
            "age_approx": None if i % 17 == 0 else float(rng.integers(20, 85) // 5 * 5),
            "sex": None if i % 23 == 0 else ("male", "female")[int(rng.integers(2))],
            "anatom_site_general": SITES[int(rng.integers(len(SITES)))],
            "tbp_tile_type": ("3D: white", "3D: XP")[i % 2], "target": int(i % 11 == 0),
        }
        for a in ATTRIBUTES:
            record[a.name] = float(rng.uniform(a.low, a.high))
        records.append(record)
    return records


RECORDS = _records()
_RNG = np.random.default_rng(11)
VECTORS = {name: _RNG.normal(size=(N, DIM)).astype(np.float32) for name in DEFAULT_VECTOR_NAMES}
IDS = [point_id(str(r["isic_id"])) for r in RECORDS]
PAYLOADS = [build_payload(r, FP) for r in RECORDS]
QUERIES = _RNG.normal(size=(6, DIM)).astype(np.float32)


def _points(rows: range | list[int] = range(N)) -> list[StorePoint]:
    return [StorePoint(IDS[i], {n: VECTORS[n][i] for n in DEFAULT_VECTOR_NAMES}, dict(PAYLOADS[i])) for i in rows]


def _open(backend: str, tmp_path: Path) -> VectorStore:
    if backend == "edge":
        return EdgeStore(tmp_path / "store" / "lesions", "lesions")
    return ServerStore("lesions", ":memory:")


@pytest.fixture(scope="module")
def edge_golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The edge store of the `store` fixture, written once for the module (closed): creating a
    17-vector collection and writing its 300 points takes seconds on a busy machine."""
    folder = tmp_path_factory.mktemp("contract")
    with _open("edge", folder) as s:
        s.ensure_collection(SPEC)
        s.upsert(_points())
    return folder / "store"


@pytest.fixture(params=["edge", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "edge":  # each test opens its own copy of the same store
        from dermground.platform.store.edge_versions import copy_sparse

        copy_sparse(request.getfixturevalue("edge_golden"), tmp_path / "store")
    with _open(request.param, tmp_path) as s:
        s.ensure_collection(SPEC)
        if request.param == "server":
            s.upsert(_points())
        yield s


# --- numpy reference ------------------------------------------------------------------------
def _matches(i: int, flt: SearchFilter | None) -> bool:
    if flt is None:
        return True
    payload = PAYLOADS[i]
    if any(payload.get(k) != v for k, v in flt.keyword_equals().items()):
        return False
    if any(payload.get(k) not in set(vs) for k, vs in flt.any_of.items()):
        return False
    for key, rng in flt.ranges.items():
        value = payload.get(key)
        if value is None or (rng.gte is not None and value < rng.gte) or (rng.lte is not None and value > rng.lte) \
                or (rng.gt is not None and value <= rng.gt) or (rng.lt is not None and value >= rng.lt):
            return False
    return payload["patient_id"] not in set(flt.exclude_patient_ids) and IDS[i] not in set(flt.exclude_ids)


def _cos(name: str, q: np.ndarray) -> np.ndarray:
    m = VECTORS[name]
    return (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))


def _reference(name: str, q: np.ndarray, k: int, flt: SearchFilter | None = None,
               rows: np.ndarray | None = None) -> list[tuple[str, float]]:
    scores = _cos(name, q)
    candidates = [i for i in (range(N) if rows is None else rows) if _matches(int(i), flt)]
    best = sorted(candidates, key=lambda i: -scores[i])[:k]
    return [(IDS[i], float(scores[i])) for i in best]


def _assert_payload(got: dict | None, expected: dict) -> None:
    """Equal payloads; floats to 1e-12 relative (the engine's JSON round trip may move one ulp)."""
    assert got is not None and set(got) == set(expected)
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert got[key] == value, key


def _assert_same(hits, expected) -> None:
    assert [h.id for h in hits] == [e[0] for e in expected]
    np.testing.assert_allclose([h.score for h in hits], [e[1] for e in expected], atol=1e-5)


FILTERS = {
    "split": SearchFilter(split="train"),
    "equals_keyword": SearchFilter(equals={"sex": "female"}),
    "equals_target": SearchFilter(equals={"target": 1}),
    "any_of": SearchFilter(any_of={"anatom_site_general": ["head/neck", "posterior torso"]}),
    "age_range": SearchFilter(ranges={"age_approx": Range(gte=40, lte=60)}),
    "attribute_range": SearchFilter(ranges={"areaMM2": Range(gt=100.0, lt=300.0)}),
    "exclude_patients": SearchFilter(exclude_patient_ids=[f"IP_{p:04d}" for p in range(0, 40, 2)]),
    "exclude_ids": SearchFilter(exclude_ids=IDS[:150]),
    "combined": SearchFilter(split="train", equals={"tbp_tile_type": "3D: XP"},
                             ranges={"deltaB": Range(gte=-10.0), "age_approx": Range(lte=70)},
                             exclude_patient_ids=["IP_0001"]),
}


# --- queries --------------------------------------------------------------------------------
def test_query_matches_exact_numpy(store: VectorStore) -> None:
    for q in QUERIES[:3]:
        _assert_same(store.query("image", q, 10), _reference("image", q, 10))
        _assert_same(store.query("q_deltaL", q, 7), _reference("q_deltaL", q, 7))


@pytest.mark.parametrize("kind", sorted(FILTERS))
def test_filtered_query_matches_exact_numpy(store: VectorStore, kind: str) -> None:
    flt = FILTERS[kind]
    expected = _reference("image", QUERIES[0], 10, flt)
    assert len(expected) == 10  # the filter leaves enough points to make the test meaningful
    hits = store.query("image", QUERIES[0], 10, flt)
    _assert_same(hits, expected)
    assert store.count(flt) == sum(_matches(i, flt) for i in range(N))


def test_query_returns_payload_and_vectors_on_request(store: VectorStore) -> None:
    bare = store.query("image", QUERIES[1], 3, with_payload=False)
    assert all(h.payload is None and h.vectors is None for h in bare)
    assert [h.isic_id for h in bare] == [PAYLOADS[IDS.index(h.id)]["isic_id"] for h in bare]
    full = store.query("image", QUERIES[1], 3, with_payload=True, with_vectors=["q_areaMM2"])
    _assert_payload(full[0].payload, PAYLOADS[IDS.index(full[0].id)])
    assert set(full[0].vectors) == {"q_areaMM2"}


def test_excluding_query_patient_removes_all_their_lesions(store: VectorStore) -> None:
    patient = PAYLOADS[0]["patient_id"]
    hits = store.query("image", VECTORS["image"][0], 50, SearchFilter(exclude_patient_ids=[patient]))
    assert hits and all(h.payload["patient_id"] != patient for h in hits)


@pytest.mark.parametrize("with_filter", [False, True])
def test_prefetch_rescore_matches_numpy_two_stage(store: VectorStore, with_filter: bool) -> None:
    flt = FILTERS["split"] if with_filter else None
    q_img, q_attr = QUERIES[2], QUERIES[3]
    b = 40
    top_b = [IDS.index(pid) for pid, _ in _reference("image", q_img, b, flt)]
    expected = _reference("q_areaMM2", q_attr, 5, None, rows=np.array(top_b))
    _assert_same(store.prefetch_rescore("image", q_img, b, "q_areaMM2", q_attr, 5, flt), expected)


# --- point access ---------------------------------------------------------------------------
def test_retrieve_in_order_asked_skipping_unknown(store: VectorStore) -> None:
    unknown = point_id("ISIC_missing")
    got = store.retrieve([IDS[5], unknown, IDS[2]], with_vectors=["image"])
    assert [p.id for p in got] == [IDS[5], IDS[2]]
    _assert_payload(got[0].payload, PAYLOADS[5])  # the engine may move floats by 1 ulp
    unit = VECTORS["image"][5] / np.linalg.norm(VECTORS["image"][5])
    np.testing.assert_allclose(got[0].vectors["image"], unit, atol=1e-5)  # cosine stores unit vectors


def test_scroll_visits_every_point_once(store: VectorStore) -> None:
    seen = [p.id for p in store.iter_points(page_size=64, with_payload=False)]
    assert len(seen) == N and set(seen) == set(IDS)
    train = store.all_ids(SearchFilter(split="train"))
    assert set(train) == {IDS[i] for i in range(N) if PAYLOADS[i]["split"] == "train"}


def test_delete(store: VectorStore) -> None:
    gone = IDS[:5]
    store.delete(gone + [point_id("ISIC_never_there")])
    assert store.count() == N - 5
    assert store.retrieve(gone) == []
    hits = store.query("image", VECTORS["image"][0], N)
    assert not set(gone) & {h.id for h in hits}


def test_update_vectors_keeps_other_vectors_and_payload(store: VectorStore) -> None:
    new = np.ones(DIM, dtype=np.float32)
    store.update_vectors({IDS[3]: {"q_areaMM2": new}})
    (point,) = store.retrieve([IDS[3]], with_vectors=True)
    assert set(point.vectors) == set(DEFAULT_VECTOR_NAMES)
    np.testing.assert_allclose(point.vectors["q_areaMM2"], new / np.linalg.norm(new), atol=1e-6)
    np.testing.assert_allclose(point.vectors["image"], VECTORS["image"][3] / np.linalg.norm(VECTORS["image"][3]),
                               atol=1e-5)
    _assert_payload(point.payload, PAYLOADS[3])
    with pytest.raises(StoreError):
        store.update_vectors({point_id("ISIC_never_there"): {"image": new}})


def test_set_payload_merges(store: VectorStore) -> None:
    store.set_payload([IDS[4]], {"note": "checked"})
    (point,) = store.retrieve([IDS[4]])
    _assert_payload(point.payload, PAYLOADS[4] | {"note": "checked"})


def test_reupsert_overwrites_never_duplicates(store: VectorStore) -> None:
    again = _points(range(10))
    for p in again:
        p.payload["split"] = "holdout"
    store.upsert(again)
    assert store.count() == N
    assert store.count(SearchFilter(split="holdout")) == 10


# --- schema guard ---------------------------------------------------------------------------
def test_other_fingerprint_or_dimension_is_refused(store: VectorStore) -> None:
    with pytest.raises(SchemaMismatchError, match=r"'lesions'.*stored 'fp-test-1', offered 'other'"):
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="other"))
    with pytest.raises(SchemaMismatchError, match="stored 32, offered 64"):
        store.ensure_collection(CollectionSpec(dim=64, fingerprint=FP))
    short = StorePoint(IDS[0], {"image": np.ones(16, dtype=np.float32)}, dict(PAYLOADS[0]))
    with pytest.raises(SchemaMismatchError, match="ISIC_0000000.*dimension 32"):
        store.upsert([short])
    foreign = _points([1])[0]
    foreign.payload["fingerprint"] = "other"
    with pytest.raises(SchemaMismatchError, match="fingerprint 'other'"):
        store.upsert([foreign])
    assert store.ensure_collection(SPEC) == SPEC
    assert store.count() == N


def test_missing_collection_says_what_to_do(tmp_path: Path) -> None:
    for backend in ("edge", "server"):
        with _open(backend, tmp_path) as s:
            assert s.describe() is None
            with pytest.raises(StoreError, match="does not exist"):
                s.query("image", QUERIES[0], 3)


def test_open_store_picks_backend_from_settings(tmp_path: Path) -> None:
    with open_store(Settings(home=tmp_path), "c1") as s:
        assert isinstance(s, EdgeStore) and s.root == tmp_path / "qdrant" / "c1"
    with open_store(Settings(home=tmp_path, qdrant_url=":memory:"), "c1") as s:
        assert isinstance(s, ServerStore)


# --- embedded engine specifics --------------------------------------------------------------
def test_edge_persists_across_reopen(tmp_path: Path) -> None:
    with _open("edge", tmp_path) as s:
        s.ensure_collection(SPEC)
        s.upsert(_points())
    with _open("edge", tmp_path) as s:
        assert s.describe() == SPEC
        assert s.count() == N
        _assert_same(s.query("image", QUERIES[0], 10, FILTERS["combined"]),
                     _reference("image", QUERIES[0], 10, FILTERS["combined"]))


def test_edge_second_process_gets_locked_error_naming_holder(tmp_path: Path) -> None:
    root = tmp_path / "store" / "lesions"
    with _open("edge", tmp_path) as s:
        s.ensure_collection(SPEC)
    with held_by_another_process(root, "lesions") as holder:
        with pytest.raises(StoreLockedError, match=rf"pid {holder.pid}.*DERMGROUND_QDRANT_URL"):
            EdgeStore(root, "lesions")
    with EdgeStore(root, "lesions") as s:  # the lock goes with the holder
        assert s.describe() == SPEC


def test_both_backends_give_identical_results(tmp_path: Path) -> None:
    with _open("edge", tmp_path) as edge, _open("server", tmp_path) as server:
        for s in (edge, server):
            s.ensure_collection(SPEC)
            s.upsert(_points())
        for flt in [None, *FILTERS.values()]:
            a, b = edge.query("q_norm_color", QUERIES[5], 10, flt), server.query("q_norm_color", QUERIES[5], 10, flt)
            _assert_same(a, [(h.id, h.score) for h in b])
            a = edge.prefetch_rescore("image", QUERIES[0], 30, "q_A", QUERIES[1], 5, flt)
            b = server.prefetch_rescore("image", QUERIES[0], 30, "q_A", QUERIES[1], 5, flt)
            _assert_same(a, [(h.id, h.score) for h in b])
            assert edge.count(flt) == server.count(flt)
