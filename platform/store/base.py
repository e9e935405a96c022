"""The vector store interface and its backend-neutral data types and errors.

Two backends implement it (store/edge.py: embedded engine, store/server.py: qdrant-client) and one
contract test suite (tests/test_store_contract.py) proves they give the same results.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

import numpy as np

from dermground.platform.next_step import next_command
from dermground.platform.store.schema import (
    DEFAULT_VECTOR_NAMES,
    IMAGE_VECTOR,
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    NUMERIC_FIELDS,
    SCHEMA_VERSION,
)

T = TypeVar("T")


def ingest_step(collection: str) -> str:
    """The ingest that fills a collection that does not exist yet, named by its alias (not lesions__v2)."""
    from dermground.platform.store.versions import split_physical  # versions imports this module

    return next_command(f"ingest --data DIR --collection {split_physical(collection)[0]}")


class StoreError(RuntimeError):
    """A vector store operation failed; the message says what to do next."""


class SchemaMismatchError(StoreError):
    """Vectors or a spec do not match what the collection was created with."""


class StoreLockedError(StoreError):
    """The embedded store folder is held by another process."""

    owner: dict[str, object] | None = None  # the holder's owner record, where the embedded store has one


class CollectionMissingError(StoreError):
    """The collection an operation addressed is not there (on a server: a version dropped while a
    reader still used it, or a collection deleted with Qdrant's own tools)."""


class StoreUnavailableError(StoreError):
    """The Qdrant server cannot be reached, did not answer in time, refused the API key or failed;
    the message names the URL and the setting or step that fixes it."""


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection holds: vector size, model fingerprint, named vectors, which get HNSW."""

    dim: int
    fingerprint: str
    vector_names: tuple[str, ...] = DEFAULT_VECTOR_NAMES
    hnsw_on: tuple[str, ...] = (IMAGE_VECTOR,)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if not self.fingerprint:
            raise ValueError("fingerprint must be non-empty")
        if not set(self.hnsw_on) <= set(self.vector_names):
            raise ValueError(f"hnsw_on {self.hnsw_on} names vectors not in {self.vector_names}")

    def to_dict(self) -> dict[str, object]:
        return {"dim": self.dim, "fingerprint": self.fingerprint,
                "vector_names": list(self.vector_names), "hnsw_on": list(self.hnsw_on),
                "schema_version": self.schema_version}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CollectionSpec:
        return cls(dim=int(data["dim"]), fingerprint=str(data["fingerprint"]),  # type: ignore[arg-type]
                   vector_names=tuple(data["vector_names"]),  # type: ignore[arg-type]
                   hnsw_on=tuple(data.get("hnsw_on", (IMAGE_VECTOR,))),  # type: ignore[arg-type]
                   schema_version=int(data.get("schema_version", SCHEMA_VERSION)))  # type: ignore[arg-type]

    def check_compatible(self, stored: CollectionSpec, collection: str) -> None:
        """Raise SchemaMismatchError unless `self` (offered) may write into `stored`."""
        problems = []
        if stored.dim != self.dim:
            problems.append(f"vector size: stored {stored.dim}, offered {self.dim}")
        if stored.fingerprint != self.fingerprint:
            problems.append(f"model fingerprint: stored {stored.fingerprint!r}, offered {self.fingerprint!r}")
        if stored.schema_version != self.schema_version:
            problems.append(f"schema version: stored {stored.schema_version}, offered {self.schema_version}")
        if set(self.vector_names) - set(stored.vector_names):
            problems.append(f"vector names not in the collection: {sorted(set(self.vector_names) - set(stored.vector_names))}")
        if problems:
            raise SchemaMismatchError(
                f"collection {collection!r} was created for other vectors ({'; '.join(problems)}). "
                "A collection never mixes models: ingest into a new collection name "
                "(--collection), or delete this collection to rebuild it with this model.")


@dataclass
class StorePoint:
    """One lesion: its point id (uuid5 of isic_id), named vectors and payload."""

    id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, object] = field(default_factory=dict)


@dataclass
class Hit:
    """A search result. `payload` is None when not requested; `vectors` None when not requested."""

    id: str
    isic_id: str | None
    score: float
    payload: dict[str, object] | None = None
    vectors: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class Range:
    """A numeric range; any bound may be None (open)."""

    gte: float | None = None
    lte: float | None = None
    gt: float | None = None
    lt: float | None = None

    def __post_init__(self) -> None:
        bounds = [b for b in (self.gte, self.lte, self.gt, self.lt) if b is not None]
        if not bounds:
            raise ValueError("a Range needs at least one bound")
        if not all(math.isfinite(b) for b in bounds):
            raise ValueError(f"Range bounds must be finite numbers: {self}")
        low = max((b for b in (self.gte, self.gt) if b is not None), default=None)
        high = min((b for b in (self.lte, self.lt) if b is not None), default=None)
        # A range no value can fall in matches nothing: almost surely its bounds were swapped.
        if low is not None and high is not None and (low > high or (low == high and (
                self.gt == low or self.lt == high))):
            raise ValueError(f"the range matches no value: its low bound {low:g} is above its high bound {high:g} "
                             "(swapped?)")


@dataclass(frozen=True)
class SearchFilter:
    """A payload filter every backend translates (all parts are ANDed).

    equals: keyword/integer field -> value; any_of: keyword field -> allowed values;
    ranges: numeric field (age_approx, target, the 16 attributes) -> Range; split: shorthand for
    equals["split"]; exclude_patient_ids / exclude_ids (point ids) drop matching points.
    """

    equals: Mapping[str, str | int] = field(default_factory=dict)
    any_of: Mapping[str, Sequence[str]] = field(default_factory=dict)
    ranges: Mapping[str, Range] = field(default_factory=dict)
    split: str | None = None
    exclude_patient_ids: Sequence[str] = ()
    exclude_ids: Sequence[str] = ()

    def __post_init__(self) -> None:
        allowed_eq = set(KEYWORD_FIELDS) | set(INTEGER_FIELDS)
        for key in self.equals:
            if key not in allowed_eq:
                raise ValueError(f"cannot filter equals on {key!r}; allowed: {sorted(allowed_eq)}")
        for key, values in self.any_of.items():
            if key not in KEYWORD_FIELDS:
                raise ValueError(f"cannot filter any_of on {key!r}; allowed: {list(KEYWORD_FIELDS)}")
            if isinstance(values, str) or not values:
                raise ValueError(f"any_of[{key!r}] must be a non-empty list of values")
        for key, rng in self.ranges.items():
            if key not in NUMERIC_FIELDS:
                raise ValueError(f"cannot filter a range on {key!r}; allowed: {list(NUMERIC_FIELDS)}")
            if not isinstance(rng, Range):
                raise ValueError(f"ranges[{key!r}] must be a Range, got {rng!r}")

    def keyword_equals(self) -> dict[str, str | int]:
        """equals with the split shorthand folded in."""
        merged = dict(self.equals)
        if self.split is not None:
            merged["split"] = self.split
        return merged

    def is_empty(self) -> bool:
        return not (self.equals or self.any_of or self.ranges or self.split is not None
                    or self.exclude_patient_ids or self.exclude_ids)


VectorSelection = bool | Sequence[str]


def float32_vectors(raw: object) -> dict[str, np.ndarray] | None:
    """Named vectors as returned by a Qdrant engine, as float32 arrays (None when there are none)."""
    if not raw:
        return None
    return {name: np.asarray(v, dtype=np.float32) for name, v in raw.items()}  # type: ignore[union-attr]


def vector_selection(selection: VectorSelection) -> bool | list[str]:
    """The with_vector(s) argument both engines accept: a flag or a list of names."""
    return selection if isinstance(selection, bool) else list(selection)


# Both engines return records and scored points with .id, .payload, .vector (and .score).
def store_point(record: object) -> StorePoint:
    """An engine record as a StorePoint."""
    return StorePoint(str(record.id), float32_vectors(record.vector) or {},  # type: ignore[attr-defined]
                      dict(record.payload or {}))  # type: ignore[attr-defined]


def in_requested_order(records: Sequence[object], ids: Sequence[str]) -> list[StorePoint]:
    """Records as StorePoints in the order of `ids`; ids the engine did not return are skipped."""
    found = {point.id: point for point in map(store_point, records)}
    return [found[i] for i in ids if i in found]


def scored_hits(scored: Sequence[object], with_payload: bool) -> list[Hit]:
    """Engine scored points as Hits (isic_id always filled, payload only when asked for)."""
    hits = []
    for p in scored:
        # Each access of .payload converts the engine's payload anew (~2 us): read it once, no copy.
        payload = p.payload or {}  # type: ignore[attr-defined]
        hits.append(Hit(id=str(p.id), isic_id=payload.get("isic_id"), score=float(p.score),  # type: ignore[attr-defined]
                        payload=payload if with_payload else None,
                        vectors=float32_vectors(p.vector)))  # type: ignore[attr-defined]
    return hits


class VectorStore(abc.ABC):
    """A collection of lesion points with named vectors. Use as a context manager."""

    collection: str

    # --- collection ----------------------------------------------------------------------
    @abc.abstractmethod
    def describe(self) -> CollectionSpec | None:
        """The stored spec of this collection, or None when it does not exist yet."""

    @abc.abstractmethod
    def ensure_collection(self, spec: CollectionSpec) -> CollectionSpec:
        """Create the collection (vectors + payload indexes) or validate it against `spec`."""

    def require_spec(self) -> CollectionSpec:
        spec = self.describe()
        if spec is None:
            raise StoreError(f"collection {self.collection!r} does not exist; run `{ingest_step(self.collection)}` first")
        return spec

    # --- writes --------------------------------------------------------------------------
    @abc.abstractmethod
    def upsert(self, points: Sequence[StorePoint], wait: bool = True) -> None:
        """Insert or replace whole points (all their vectors in one call)."""

    @abc.abstractmethod
    def update_vectors(self, vectors: Mapping[str, Mapping[str, np.ndarray]], wait: bool = True) -> None:
        """Set some named vectors of existing points (id -> name -> vector); others are kept."""

    @abc.abstractmethod
    def set_payload(self, ids: Sequence[str], payload: Mapping[str, object], wait: bool = True) -> None:
        """Merge `payload` keys into the payload of existing points."""

    @abc.abstractmethod
    def delete(self, ids: Sequence[str], wait: bool = True) -> None:
        """Delete points by id (unknown ids are ignored)."""

    # --- reads ---------------------------------------------------------------------------
    @abc.abstractmethod
    def query(self, vector_name: str, vector: np.ndarray, k: int, filter: SearchFilter | None = None,
              with_payload: bool = True, with_vectors: VectorSelection = False) -> list[Hit]:
        """Top-k by cosine on one named vector, with an optional payload filter."""

    @abc.abstractmethod
    def prefetch_rescore(self, prefetch_name: str, prefetch_vector: np.ndarray, b: int,
                         rescore_name: str, rescore_vector: np.ndarray, k: int,
                         filter: SearchFilter | None = None, with_payload: bool = True,
                         with_vectors: VectorSelection = False) -> list[Hit]:
        """Top-b on `prefetch_name` (filtered), then the top-k of those by `rescore_name`."""

    @abc.abstractmethod
    def retrieve(self, ids: Sequence[str], with_payload: bool = True,
                 with_vectors: VectorSelection = False) -> list[StorePoint]:
        """Points by id, in the order asked; unknown ids are skipped."""

    @abc.abstractmethod
    def scroll(self, filter: SearchFilter | None = None, limit: int = 1000, offset: str | None = None,
               with_payload: bool = True, with_vectors: VectorSelection = False,
               ) -> tuple[list[StorePoint], str | None]:
        """One page of points and the offset of the next page (None at the end)."""

    @abc.abstractmethod
    def count(self, filter: SearchFilter | None = None) -> int:
        """Exact number of points (matching the filter)."""

    def iter_points(self, filter: SearchFilter | None = None, page_size: int = 1000,
                    with_payload: bool = True, with_vectors: VectorSelection = False) -> Iterator[StorePoint]:
        """Every point (matching the filter), page by page."""
        offset: str | None = None
        while True:
            page, offset = self.scroll(filter, page_size, offset, with_payload, with_vectors)
            yield from page
            if offset is None:
                return

    def all_ids(self, filter: SearchFilter | None = None) -> list[str]:
        """All point ids (matching the filter)."""
        return [p.id for p in self.iter_points(filter, page_size=2000, with_payload=False)]

    def points_missing_vector(self, name: str) -> list[StorePoint]:
        """Points (payload: isic_id only, no vectors) that lack the named vector. This reads the one
        vector of every point; a backend whose engine filters on a vector's presence reads none."""
        return [StorePoint(p.id, {}, {k: v for k, v in (p.payload or {}).items() if k == "isic_id"})
                for p in self.iter_points(with_payload=True, with_vectors=[name]) if name not in (p.vectors or {})]

    def missing_payload_indexes(self) -> list[str]:
        """Payload fields of the schema's indexes (schema.PAYLOAD_INDEXES) the collection lacks;
        ensure_collection creates them. A backend whose create cannot stop half-way keeps none missing."""
        return []

    # --- maintenance ---------------------------------------------------------------------
    @abc.abstractmethod
    def optimize(self) -> bool:
        """Build indexes (HNSW on spec.hnsw_on only); True when work was done."""

    # Snapshots and restores work on versions, the same way for every backend: store/snapshots.py.

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store (the embedded folder lock, the client connection)."""

    def pinned(self) -> contextlib.AbstractContextManager[VectorStore]:
        """The store one multi-step operation (a search) uses throughout: itself, except for a store
        that follows an alias (store/live.py), which keeps the version the operation started on."""
        return contextlib.nullcontext(self)

    def run_pinned(self, operation: Callable[[VectorStore], T]) -> T:
        """Run a multi-step operation on `pinned()`. A store that follows an alias runs it once more
        on the version live now when the pinned one was dropped meanwhile (store/live.py)."""
        with self.pinned() as store:
            return operation(store)

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- shared validation ---------------------------------------------------------------
    def _check_points(self, spec: CollectionSpec, points: Sequence[StorePoint]) -> None:
        for point in points:
            self._check_vectors(spec, point.id, point.vectors, point.payload.get("isic_id"))
            fingerprint = point.payload.get("fingerprint")
            if fingerprint is not None and fingerprint != spec.fingerprint:
                raise SchemaMismatchError(
                    f"collection {self.collection!r}: point {point.payload.get('isic_id', point.id)!r} "
                    f"carries model fingerprint {fingerprint!r}, the collection holds {spec.fingerprint!r}; "
                    "ingest this model into another collection.")

    def _check_vectors(self, spec: CollectionSpec, pid: str, vectors: Mapping[str, np.ndarray],
                       isic_id: object = None) -> None:
        who = isic_id or pid
        for name, vector in vectors.items():
            if name not in spec.vector_names:
                raise SchemaMismatchError(
                    f"collection {self.collection!r}: point {who!r} has unknown vector {name!r}; "
                    f"known: {', '.join(spec.vector_names)}")
            shape = np.shape(vector)
            if shape != (spec.dim,):
                raise SchemaMismatchError(
                    f"collection {self.collection!r}: point {who!r} vector {name!r} has shape {shape}, "
                    f"the collection stores dimension {spec.dim}; embeddings from another model "
                    "belong in another collection.")
            if not np.isfinite(vector).all():  # the method form: half the cost of np.all() per query
                raise StoreError(f"collection {self.collection!r}: point {who!r} vector {name!r} has NaN/inf values")
