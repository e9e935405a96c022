"""EdgeStore: the embedded Qdrant engine (qdrant-edge-py), persistent in a local folder.

Folder layout (one per collection, under settings.store_dir):
    <root>/shard/            the EdgeShard (segments, WAL; the WAL lock makes it single-owner)
    <root>/collection.json   CollectionSpec (dim, fingerprint, vector names, schema version)
    <root>/owner.json        pid, start time + command of the process holding the shard (names it in errors)
The engine never indexes in the background: search is exact brute force until optimize().
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from dermground.platform.processes import process_start
from dermground.platform.store.base import (
    CollectionSpec,
    Hit,
    SchemaMismatchError,
    SearchFilter,
    StoreError,
    StoreLockedError,
    StorePoint,
    VectorSelection,
    VectorStore,
    in_requested_order,
    ingest_step,
    scored_hits,
    store_point,
    vector_selection,
)
from dermground.platform.store.brief_hold import brief_purpose
from dermground.platform.store.indexing import optimizer_config, search_params
from dermground.platform.store.serving_hold import served_url
from dermground.platform.store.schema import PAYLOAD_INDEXES

SHARD_DIR = "shard"
META_FILE = "collection.json"
OWNER_FILE = "owner.json"

_INDEX_TYPES = {"keyword": qe.PayloadSchemaType.Keyword, "integer": qe.PayloadSchemaType.Integer,
                "float": qe.PayloadSchemaType.Float}
# m=0 disables the HNSW graph: only the vectors searched first (image) are worth ~2 min each at 100k.
_NO_HNSW = qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10000)


def edge_filter(flt: SearchFilter | None) -> qe.Filter | None:
    """Translate a SearchFilter into an engine Filter."""
    if flt is None or flt.is_empty():
        return None
    must: list[object] = []
    for key, value in flt.keyword_equals().items():
        must.append(qe.FieldCondition(key=key, match=qe.MatchValue(value=value)))
    for key, values in flt.any_of.items():
        must.append(qe.FieldCondition(key=key, match=qe.MatchAny(any=list(values))))
    for key, rng in flt.ranges.items():
        must.append(qe.FieldCondition(key=key, range=qe.RangeFloat(gte=rng.gte, gt=rng.gt, lte=rng.lte, lt=rng.lt)))
    must_not: list[object] = []
    if flt.exclude_patient_ids:
        must_not.append(qe.FieldCondition(key="patient_id", match=qe.MatchAny(any=list(flt.exclude_patient_ids))))
    if flt.exclude_ids:
        must_not.append(qe.HasIdCondition(point_ids=set(flt.exclude_ids)))
    return qe.Filter(must=must or None, must_not=must_not or None)


def float_rows(spec: CollectionSpec, named: Sequence[Mapping[str, np.ndarray]],
               ) -> Iterator[dict[str, memoryview]] | None:
    """Named vectors (one mapping per point) as the engine reads them fastest, point by point, or
    None unless every vector has a known name, shape (spec.dim,), dtype float32/float64 and finite
    values.

    The engine reads a vector as a sequence, item by item: from a numpy array each item is a numpy
    scalar; from a memoryview of the same memory it is a plain float, made and dropped on the fly
    (no list of them either): 0.4x the time at 17 x 128 floats a point (benchmarks/commit.py).
    The checks run here, at once, over all vectors stacked, instead of once per vector.
    """
    known = set(spec.vector_names)
    flat: list[np.ndarray] = []
    for vectors in named:
        if not known.issuperset(vectors):
            return None
        flat.extend(vectors.values())
    try:
        stacked = np.stack(flat)  # raises on vectors of different shapes (and on none at all)
    except (ValueError, TypeError):
        return None
    if (stacked.shape[1:] != (spec.dim,) or stacked.dtype not in (np.float32, np.float64)
            or not np.isfinite(stacked).all()):
        return None
    # Its items are doubles: the engine rounds them to float32 as it rounds a numpy vector's values.
    rows = iter(stacked)
    return ({name: memoryview(next(rows)) for name in vectors} for vectors in named)


def read_owner_record(root: Path) -> dict[str, object] | None:
    """The owner record of a store folder as written (see _open), or None where there is none."""
    try:
        owner = json.loads((root / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _read_owner(root: Path) -> str:
    try:
        owner = json.loads((root / OWNER_FILE).read_text())
        return f"pid {owner['pid']} on {owner.get('host', '?')} ({owner.get('command', '?')}), since {owner.get('since', '?')}"
    except (OSError, ValueError, KeyError):
        return "another process (no owner file found)"


class EdgeStore(VectorStore):
    """A collection in the embedded engine; one process owns the folder at a time."""

    def __init__(self, root: Path, collection: str, *, hnsw_ef: int | None = None,
                 index_min_points: int = 0) -> None:
        """hnsw_ef: candidates an HNSW search keeps (None: the engine's default, ef_construct);
        index_min_points: a collection created here gets its HNSW index from optimize() only for
        segments of at least this many points (0: the engine's default, 10 MB of vectors)."""
        self.root = Path(root)
        self.collection = collection
        self.search_params = search_params(hnsw_ef)
        self.index_min_points = index_min_points
        self._shard: qe.EdgeShard | None = None
        self._spec: CollectionSpec | None = None
        meta = self.root / META_FILE
        if meta.exists():
            self._spec = CollectionSpec.from_dict(json.loads(meta.read_text()))
        if (self.root / SHARD_DIR / "edge_config.json").exists():
            self._open(lambda path: qe.EdgeShard.load(path))

    # --- opening and ownership -----------------------------------------------------------
    def _open(self, opener) -> None:  # noqa: ANN001 - EdgeShard.load or .create
        try:
            self._shard = opener(str(self.root / SHARD_DIR))
        except Exception as exc:  # the engine raises bare Exception
            if "WouldBlock" in str(exc):
                refusal = StoreLockedError(
                    f"the embedded vector store of collection {self.collection!r} ({self.root}) is in use by "
                    f"{_read_owner(self.root)}. Stop that process, or run both against a Qdrant server "
                    "(set DERMGROUND_QDRANT_URL, e.g. from docker/compose.yaml).")
                refusal.owner = read_owner_record(self.root)  # what a command may offer instead (a serve's URL)
                raise refusal from None
            raise StoreError(f"cannot open the embedded store {self.root}: {exc}") from exc
        # `started` tells this process from a later one given the same pid (store/versions.process_alive).
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": process_start(os.getpid()),
                 "command": " ".join(sys.argv)[:500], "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        purpose = brief_purpose()
        if purpose:  # a reader that lets go in a moment: a `serve` started meanwhile waits for it
            owner["brief"] = purpose
        url = served_url()
        if url:  # a `serve`: a `dermground search` refused this version points to its API
            owner["serves"] = url
        _write_json(self.root / OWNER_FILE, owner)

    def _require_shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise StoreError(f"collection {self.collection!r} does not exist in {self.root}; "
                             f"run `{ingest_step(self.collection)}` first")
        return self._shard

    def close(self) -> None:
        if self._shard is None:
            return
        shard, self._shard = self._shard, None
        shard.close()
        try:
            owner = json.loads((self.root / OWNER_FILE).read_text())
            if owner.get("pid") == os.getpid():
                (self.root / OWNER_FILE).unlink()
        except (OSError, ValueError):
            pass

    # --- collection ----------------------------------------------------------------------
    def describe(self) -> CollectionSpec | None:
        return self._spec if self._shard is not None else None

    def ensure_collection(self, spec: CollectionSpec) -> CollectionSpec:
        if self._shard is not None and self._spec is not None:
            spec.check_compatible(self._spec, self.collection)
            return self._spec
        if self._shard is None:
            self.root.mkdir(parents=True, exist_ok=True)
            config = qe.EdgeConfig(vectors={
                name: qe.EdgeVectorParams(size=spec.dim, distance=qe.Distance.Cosine,
                                          hnsw_config=None if name in spec.hnsw_on else _NO_HNSW)
                for name in spec.vector_names}, optimizers=optimizer_config(self.index_min_points, spec.dim))
            self._open(lambda path: qe.EdgeShard.create(path, config))
        shard = self._require_shard()
        for field, kind in PAYLOAD_INDEXES.items():
            shard.update(qe.UpdateOperation.create_field_index(field, _INDEX_TYPES[kind]))
        # Metadata is written last: a folder without it is an unfinished create, redone here.
        _write_json(self.root / META_FILE, spec.to_dict())
        self._spec = spec
        return spec

    # --- writes --------------------------------------------------------------------------
    def _update(self, operation: qe.UpdateOperation, what: str) -> None:
        try:
            self._require_shard().update(operation)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"collection {self.collection!r}: {what} failed: {exc}") from exc

    def upsert(self, points: Sequence[StorePoint], wait: bool = True) -> None:
        # `wait` is always honoured: the engine applies the update before returning.
        spec = self.require_spec()
        vectors = self._checked_vectors(spec, points)
        if not points:
            return
        edge_points = [qe.Point(id=p.id, vector=named, payload=p.payload)
                       for p, named in zip(points, vectors, strict=True)]
        self._update(qe.UpdateOperation.upsert_points(edge_points), f"upsert of {len(points)} points")

    def _checked_vectors(self, spec: CollectionSpec, points: Sequence[StorePoint]) -> Iterable[Mapping[str, object]]:
        """The points' named vectors as the engine takes them fastest (one mapping per point, made
        lazily), after every check of _check_points: same errors, same order."""
        rows = float_rows(spec, [p.vectors for p in points])
        if rows is None:  # a check fails, or odd input: the per-vector checks name the point at fault
            self._check_points(spec, points)
            return [dict(p.vectors) for p in points]
        # Every vector passed; what is left to check is the fingerprint of the points that carry another.
        self._check_points(spec, [p for p in points if p.payload.get("fingerprint") not in (None, spec.fingerprint)])
        return rows

    def update_vectors(self, vectors: Mapping[str, Mapping[str, np.ndarray]], wait: bool = True) -> None:
        spec = self.require_spec()
        rows = float_rows(spec, list(vectors.values()))
        if rows is None:  # as in upsert: the per-vector checks name the point at fault
            for pid, named in vectors.items():
                self._check_vectors(spec, pid, named)
            rows = (dict(named) for named in vectors.values())
        if vectors:
            ops = [qe.PointVectors(id=pid, vector=named) for pid, named in zip(vectors, rows, strict=True)]
            self._update(qe.UpdateOperation.update_vectors(ops), "vector update")

    def set_payload(self, ids: Sequence[str], payload: Mapping[str, object], wait: bool = True) -> None:
        if ids:
            self._update(qe.UpdateOperation.set_payload(list(ids), dict(payload)), "payload update")

    def delete(self, ids: Sequence[str], wait: bool = True) -> None:
        if ids:
            self._update(qe.UpdateOperation.delete_points(list(ids)), "delete")

    # --- reads ---------------------------------------------------------------------------
    def _run_query(self, request: qe.QueryRequest, with_payload: bool) -> list[Hit]:
        try:
            return scored_hits(self._require_shard().query(request), with_payload)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"collection {self.collection!r}: query failed: {exc}") from exc

    def query(self, vector_name: str, vector: np.ndarray, k: int, filter: SearchFilter | None = None,
              with_payload: bool = True, with_vectors: VectorSelection = False) -> list[Hit]:
        spec = self.require_spec()
        self._check_vectors(spec, "query", {vector_name: vector})
        request = qe.QueryRequest(
            limit=k, query=qe.Query.Nearest(np.asarray(vector, dtype=np.float32), using=vector_name),
            filter=edge_filter(filter), with_payload=True if with_payload else ["isic_id"],
            with_vector=vector_selection(with_vectors), params=self.search_params)
        return self._run_query(request, with_payload)

    def prefetch_rescore(self, prefetch_name: str, prefetch_vector: np.ndarray, b: int,
                         rescore_name: str, rescore_vector: np.ndarray, k: int,
                         filter: SearchFilter | None = None, with_payload: bool = True,
                         with_vectors: VectorSelection = False) -> list[Hit]:
        spec = self.require_spec()
        self._check_vectors(spec, "query", {prefetch_name: prefetch_vector, rescore_name: rescore_vector}
                            if prefetch_name != rescore_name else {prefetch_name: prefetch_vector})
        flt = edge_filter(filter)
        prefetch = qe.Prefetch(limit=b, filter=flt, params=self.search_params, query=qe.Query.Nearest(
            np.asarray(prefetch_vector, dtype=np.float32), using=prefetch_name))
        request = qe.QueryRequest(
            limit=k, prefetches=[prefetch], filter=flt,
            query=qe.Query.Nearest(np.asarray(rescore_vector, dtype=np.float32), using=rescore_name),
            with_payload=True if with_payload else ["isic_id"], with_vector=vector_selection(with_vectors))
        return self._run_query(request, with_payload)

    def retrieve(self, ids: Sequence[str], with_payload: bool = True,
                 with_vectors: VectorSelection = False) -> list[StorePoint]:
        if not ids:
            return []
        records = self._require_shard().retrieve(list(ids), with_payload=with_payload,
                                                 with_vector=vector_selection(with_vectors))
        return in_requested_order(records, ids)

    def scroll(self, filter: SearchFilter | None = None, limit: int = 1000, offset: str | None = None,
               with_payload: bool = True, with_vectors: VectorSelection = False,
               ) -> tuple[list[StorePoint], str | None]:
        records, next_offset = self._require_shard().scroll(qe.ScrollRequest(
            limit=limit, offset=offset, filter=edge_filter(filter), with_payload=with_payload,
            with_vector=vector_selection(with_vectors)))
        points = [store_point(r) for r in records]
        return points, None if next_offset is None else str(next_offset)

    def points_missing_vector(self, name: str) -> list[StorePoint]:
        """The engine's has-vector filter: only the points lacking it, read without vectors."""
        lacking = qe.Filter(must_not=[qe.HasVectorCondition(vector=name)])
        points: list[StorePoint] = []
        offset: object = None
        while True:
            records, offset = self._require_shard().scroll(qe.ScrollRequest(
                limit=1000, offset=offset, filter=lacking, with_payload=["isic_id"], with_vector=False))
            points += [store_point(r) for r in records]
            if offset is None:
                return points

    def count(self, filter: SearchFilter | None = None) -> int:
        return int(self._require_shard().count(qe.CountRequest(exact=True, filter=edge_filter(filter))))

    # --- maintenance ---------------------------------------------------------------------
    def optimize(self) -> bool:
        """Build HNSW for spec.hnsw_on (blocking; ~2 min per indexed vector at 100k on 2 cores)."""
        return bool(self._require_shard().optimize())

    def indexed_points(self) -> int:
        """Points whose spec.hnsw_on vectors sit in an HNSW-indexed segment (0 before optimize())."""
        spec = self.require_spec()
        # The engine counts every named vector of an optimized segment, graphs or not (m=0).
        return int(self._require_shard().info().indexed_vectors_count) // max(1, len(spec.vector_names))


def _write_json(path: Path, data: Mapping[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


__all__ = ["EdgeStore", "SchemaMismatchError", "edge_filter", "float_rows"]
