"""ServerStore: a collection on a Qdrant server through qdrant-client (or its local modes in tests).

Deployment knobs (shards, replication, on-disk vectors, quantization) apply when the collection is
created. The CollectionSpec (dim, fingerprint, vector names, schema version) lives in the
collection's own metadata (Qdrant >= 1.16 and qdrant-client local mode keep it), so no reserved
point or sidecar file can drift away from the collection it describes.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Concatenate, Literal, ParamSpec, TypeVar

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse
from qdrant_client.local.qdrant_local import QdrantLocal

from dermground.platform.next_step import next_command
from dermground.platform.store.base import (
    CollectionMissingError,
    CollectionSpec,
    Hit,
    SearchFilter,
    StoreError,
    StorePoint,
    VectorSelection,
    VectorStore,
    in_requested_order,
    scored_hits,
    store_point,
    vector_selection,
)
from dermground.platform.store.schema import PAYLOAD_INDEXES
from dermground.platform.store.versions import VersionTakenError
from dermground.platform.store.server_client import connect_server

METADATA_KEY = "dermground"
# Written with a new version's collection by the ServerCollections that reserved its number.
CREATOR_KEY = "dermground_creator"

_INDEX_TYPES = {"keyword": models.PayloadSchemaType.KEYWORD, "integer": models.PayloadSchemaType.INTEGER,
                "float": models.PayloadSchemaType.FLOAT}
Quantization = Literal["none", "scalar", "binary"]


def server_filter(flt: SearchFilter | None) -> models.Filter | None:
    """Translate a SearchFilter into a qdrant-client Filter."""
    if flt is None or flt.is_empty():
        return None
    must: list[models.Condition] = []
    for key, value in flt.keyword_equals().items():
        must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
    for key, values in flt.any_of.items():
        must.append(models.FieldCondition(key=key, match=models.MatchAny(any=list(values))))
    for key, rng in flt.ranges.items():
        must.append(models.FieldCondition(key=key, range=models.Range(gte=rng.gte, gt=rng.gt, lte=rng.lte, lt=rng.lt)))
    must_not: list[models.Condition] = []
    if flt.exclude_patient_ids:
        must_not.append(models.FieldCondition(key="patient_id", match=models.MatchAny(any=list(flt.exclude_patient_ids))))
    if flt.exclude_ids:
        must_not.append(models.HasIdCondition(has_id=list(flt.exclude_ids)))
    return models.Filter(must=must or None, must_not=must_not or None)


# Qdrant's default service.max_request_size_mb; DERMGROUND_QDRANT_MAX_REQUEST_MB when the server's differs.
DEFAULT_MAX_REQUEST_MB = 32
_REQUEST_SHARE = 0.9  # of the limit a write's estimated body may take (headers, the rest of the body)
_FLOAT_JSON_BYTES = 25  # the longest JSON of one float: "-1.2345678901234567e-100,"
_PAYLOAD_JSON_BYTES = 4096  # a point's payload, id and vector names in a page read (a full payload: ~0.8 KB)
_T = TypeVar("_T")


def _json_size_bound(vectors: Mapping[str, object], payload: Mapping[str, object]) -> int:
    """An upper bound of one point's share of a write request's JSON body."""
    floats = sum(int(np.size(v)) for v in vectors.values())
    names = sum(len(n) + 8 for n in vectors)
    return floats * _FLOAT_JSON_BYTES + names + len(json.dumps(payload, default=str)) + 120


def _request_batches(items: Sequence[_T], sizes: Sequence[int], budget: int) -> Iterator[list[_T]]:
    """`items` in order, cut into runs whose sizes add up to at most `budget` (a larger item alone)."""
    batch: list[_T] = []
    used = 0
    for item, size in zip(items, sizes, strict=True):
        if batch and used + size > budget:
            yield batch
            batch, used = [], 0
        batch.append(item)
        used += size
    if batch:
        yield batch


def search_params(quantized: bool) -> models.SearchParams | None:
    """A search's parameters for a collection that is (or is not) quantized: quantized vectors are
    approximate, so the oversampled candidates are rescored with the full vectors."""
    if not quantized:
        return None
    return models.SearchParams(quantization=models.QuantizationSearchParams(rescore=True, oversampling=2.0))


def _is_quantized(config: models.CollectionConfig) -> bool:
    """Whether the collection (or one of its named vectors) stores quantized vectors."""
    vectors = config.params.vectors if isinstance(config.params.vectors, dict) else {"": config.params.vectors}
    return config.quantization_config is not None or any(
        params is not None and params.quantization_config is not None for params in vectors.values())


def _is_local_mode(client: QdrantClient) -> bool:
    """Whether the client runs qdrant-client's local engine (":memory:" or a folder), not a server."""
    return isinstance(getattr(client, "_client", None), QdrantLocal)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _names_missing_collection(exc: Exception, collection: str) -> bool:
    """Whether qdrant-client's error says `collection` is not there (local mode: a ValueError;
    a server: 404 "Collection `name` doesn't exist!")."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404 and f"`{collection}`" in exc.content.decode("utf-8", "replace")
    return str(exc) == f"Collection {collection} not found"


def _missing_collection_is_a_store_error(
        method: Callable[Concatenate[ServerStore, _P], _R]) -> Callable[Concatenate[ServerStore, _P], _R]:
    """Raise CollectionMissingError, not qdrant-client's raw error, when the collection is gone
    (a version dropped while a reader still used it): store/live.py then follows the alias."""

    @functools.wraps(method)
    def addressed(self: ServerStore, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except (ValueError, UnexpectedResponse) as exc:
            if not _names_missing_collection(exc, self.collection):
                raise
            raise CollectionMissingError(
                f"collection {self.collection!r} is not on this Qdrant any more (dropped or deleted); "
                f"see `{next_command('collections list')}`") from exc

    return addressed


class ServerStore(VectorStore):
    """A collection on a Qdrant server (url), in memory (":memory:") or in a local folder (path)."""

    def __init__(self, collection: str, location: str | None = None, *, path: Path | None = None,
                 api_key: str | None = None, timeout_s: int = 60, shards: int = 1, replication: int = 1,
                 on_disk: bool = False, quantization: Quantization = "none",
                 client: QdrantClient | None = None, creation_metadata: Mapping[str, object] | None = None,
                 max_request_mb: int = DEFAULT_MAX_REQUEST_MB) -> None:
        if client is None and (location is None) == (path is None):
            raise ValueError("give exactly one of location (url or ':memory:') and path")
        self.collection = collection
        self._local = path is not None or location == ":memory:"
        self._create_options = {"shards": shards, "replication": replication, "on_disk": on_disk,
                                "quantization": quantization}
        # Extra collection metadata written in the creating request itself (a version's record:
        # store/server_versions.py), so no crash can leave the collection without it.
        self._creation_metadata = dict(creation_metadata or {})
        # A shared client (store/server_versions.py hands one to every version) is closed by its owner.
        self._owns_client = client is None
        try:
            if client is not None:
                self._client = client
            elif path is not None:
                self._client = QdrantClient(path=str(path))
            elif location == ":memory:":
                self._client = QdrantClient(location=":memory:")
            else:  # its failures are StoreErrors naming the URL and the setting to fix
                self._client = connect_server(location, api_key=api_key, timeout_s=timeout_s)
        except StoreError:
            raise
        except Exception as exc:  # qdrant-client raises many types (RuntimeError for a held path)
            raise StoreError(f"cannot open Qdrant at {location or path}: {exc}") from exc
        self._spec: CollectionSpec | None = None
        self._created_here = False
        # A Qdrant server refuses a request body over its service.max_request_size_mb (400): writes
        # are split into requests whose estimated size stays below it (one partition of the 2B
        # model's points is ~125 MiB of JSON; the server's default limit is 32 MiB).
        self._request_budget = int(max_request_mb * 2**20 * _REQUEST_SHARE)
        # Set from what the collection records (describe), not from this process's settings.
        self._search_params: models.SearchParams | None = None

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    # --- collection ----------------------------------------------------------------------
    def describe(self) -> CollectionSpec | None:
        if self._spec is not None:
            return self._spec
        if not self._client.collection_exists(self.collection):
            return None
        config = self._client.get_collection(self.collection).config
        metadata = config.metadata or {}
        if METADATA_KEY not in metadata:
            raise StoreError(
                f"collection {self.collection!r} on this Qdrant has no {METADATA_KEY!r} metadata: it was not "
                "created by dermground (or the server is older than 1.16). Use another collection name.")
        self._spec = CollectionSpec.from_dict(metadata[METADATA_KEY])
        self._search_params = search_params(_is_quantized(config))
        return self._spec

    def ensure_collection(self, spec: CollectionSpec) -> CollectionSpec:
        stored = self.describe()
        if stored is not None:
            self._check_not_taken()
            spec.check_compatible(stored, self.collection)
            self._create_payload_indexes(self.missing_payload_indexes())  # a create killed before them
            return stored
        options = self._create_options
        no_hnsw = models.HnswConfigDiff(m=0)
        vectors = {name: models.VectorParams(size=spec.dim, distance=models.Distance.COSINE,
                                             on_disk=options["on_disk"] or None,
                                             hnsw_config=None if name in spec.hnsw_on else no_hnsw)
                   for name in spec.vector_names}
        quantization: models.QuantizationConfig | None = None
        if options["quantization"] == "scalar":
            quantization = models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=0.99, always_ram=True))
        elif options["quantization"] == "binary":
            quantization = models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))
        try:
            self._client.create_collection(
                self.collection, vectors_config=vectors, shard_number=options["shards"],
                replication_factor=options["replication"], quantization_config=quantization,
                metadata={**self._creation_metadata, METADATA_KEY: spec.to_dict()})
        except Exception:
            if self._client.collection_exists(self.collection):
                self._check_not_taken()  # another process created it between our check and our request
            raise
        self._created_here = True
        self._refuse_a_server_without_metadata()
        self._search_params = search_params(quantization is not None)
        # Not part of the creating request (Qdrant has no such field): a process killed before
        # they exist leaves them missing; the next ensure_collection creates them.
        self._create_payload_indexes(list(PAYLOAD_INDEXES))
        self._spec = spec
        return spec

    def _refuse_a_server_without_metadata(self) -> None:
        """A Qdrant server older than 1.16 accepts the creating request but drops its metadata: the
        collection would be written in full and then be unreadable (no spec, a version never ready).
        Checked before anything is written; the empty collection made here is deleted again."""
        if METADATA_KEY in (self._client.get_collection(self.collection).config.metadata or {}):
            return
        self._client.delete_collection(self.collection)
        raise StoreError(
            f"this Qdrant server does not keep collection metadata (Qdrant older than 1.16), where dermground "
            f"records what a collection holds; {self.collection!r} was not created. Upgrade the server to "
            "1.16 or later (docker/compose.yaml runs the version qdrant-client matches), or unset "
            "DERMGROUND_QDRANT_URL to use the embedded store.")

    def missing_payload_indexes(self) -> list[str]:
        """The payload fields the schema indexes that the collection has no index on (none in
        qdrant-client's local mode, which keeps no indexes and searches without them)."""
        if _is_local_mode(self._client):
            return []
        indexed = self._client.get_collection(self.collection).payload_schema or {}
        return [field for field in PAYLOAD_INDEXES if field not in indexed]

    def _create_payload_indexes(self, fields: Sequence[str]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # local mode warns that indexes have no effect there
            for field in fields:
                self._client.create_payload_index(self.collection, field, _INDEX_TYPES[PAYLOAD_INDEXES[field]],
                                                  wait=True)

    def _check_not_taken(self) -> None:
        """A store opened to create a new version refuses a collection another process created under
        the same number: two builds that reserved the same vN at once must not write into one
        collection (the embedded store reserves a number with its folder; a server has no such step)."""
        token = self._creation_metadata.get(CREATOR_KEY)
        if token is None or self._created_here:
            return
        metadata = self._client.get_collection(self.collection).config.metadata or {}
        if metadata.get(CREATOR_KEY) == token:
            return  # created by this process's collections, through another store
        from dermground.platform.store.server_versions import VERSION_METADATA_KEY

        record = metadata.get(VERSION_METADATA_KEY) or {}
        raise VersionTakenError(
            f"{self.collection!r} was created at the same time by another process building a new version "
            f"({record.get('source') or 'unknown source'}); nothing was written to it from here, and it is not "
            "this run's to drop. Run this again: it picks its version anew.")

    # --- writes --------------------------------------------------------------------------
    @_missing_collection_is_a_store_error
    def upsert(self, points: Sequence[StorePoint], wait: bool = True) -> None:
        spec = self.require_spec()
        self._check_points(spec, points)
        if not points:
            return
        structs = [models.PointStruct(id=p.id, vector={n: np.asarray(v, dtype=np.float32).tolist()
                                                       for n, v in p.vectors.items()}, payload=p.payload)
                   for p in points]
        sizes = [_json_size_bound(p.vectors, p.payload) for p in points]
        for batch in _request_batches(structs, sizes, self._request_budget):
            self._client.upsert(self.collection, points=batch, wait=wait)

    @_missing_collection_is_a_store_error
    def update_vectors(self, vectors: Mapping[str, Mapping[str, np.ndarray]], wait: bool = True) -> None:
        spec = self.require_spec()
        for pid, named in vectors.items():
            self._check_vectors(spec, pid, named)
        if not vectors:
            return
        missing = set(vectors) - {p.id for p in self.retrieve(list(vectors), with_payload=False)}
        if missing:  # the server would silently skip them; the edge engine refuses: be strict on both
            raise StoreError(f"collection {self.collection!r}: no point with id(s) {sorted(missing)[:5]}")
        ops = [models.PointVectors(id=pid, vector={n: np.asarray(v, dtype=np.float32).tolist()
                                                   for n, v in named.items()})
               for pid, named in vectors.items()]
        sizes = [_json_size_bound(named, {}) for named in vectors.values()]
        for batch in _request_batches(ops, sizes, self._request_budget):
            self._client.update_vectors(self.collection, points=batch, wait=wait)

    @_missing_collection_is_a_store_error
    def set_payload(self, ids: Sequence[str], payload: Mapping[str, object], wait: bool = True) -> None:
        if ids:
            self._client.set_payload(self.collection, payload=dict(payload), points=list(ids), wait=wait)

    @_missing_collection_is_a_store_error
    def delete(self, ids: Sequence[str], wait: bool = True) -> None:
        if ids:
            self._client.delete(self.collection, points_selector=models.PointIdsList(points=list(ids)), wait=wait)

    # --- reads ---------------------------------------------------------------------------
    @_missing_collection_is_a_store_error
    def query(self, vector_name: str, vector: np.ndarray, k: int, filter: SearchFilter | None = None,
              with_payload: bool = True, with_vectors: VectorSelection = False) -> list[Hit]:
        spec = self.require_spec()
        self._check_vectors(spec, "query", {vector_name: vector})
        response = self._client.query_points(
            self.collection, query=np.asarray(vector, dtype=np.float32).tolist(), using=vector_name,
            query_filter=server_filter(filter), search_params=self._search_params, limit=k,
            with_payload=True if with_payload else ["isic_id"], with_vectors=vector_selection(with_vectors))
        return scored_hits(response.points, with_payload)

    @_missing_collection_is_a_store_error
    def prefetch_rescore(self, prefetch_name: str, prefetch_vector: np.ndarray, b: int,
                         rescore_name: str, rescore_vector: np.ndarray, k: int,
                         filter: SearchFilter | None = None, with_payload: bool = True,
                         with_vectors: VectorSelection = False) -> list[Hit]:
        spec = self.require_spec()
        self._check_vectors(spec, "query", {prefetch_name: prefetch_vector})
        self._check_vectors(spec, "query", {rescore_name: rescore_vector})
        flt = server_filter(filter)
        prefetch = models.Prefetch(query=np.asarray(prefetch_vector, dtype=np.float32).tolist(),
                                   using=prefetch_name, filter=flt, limit=b, params=self._search_params)
        response = self._client.query_points(
            self.collection, prefetch=prefetch, query=np.asarray(rescore_vector, dtype=np.float32).tolist(),
            using=rescore_name, query_filter=flt, search_params=self._search_params, limit=k,
            with_payload=True if with_payload else ["isic_id"], with_vectors=vector_selection(with_vectors))
        return scored_hits(response.points, with_payload)

    @_missing_collection_is_a_store_error
    def retrieve(self, ids: Sequence[str], with_payload: bool = True,
                 with_vectors: VectorSelection = False) -> list[StorePoint]:
        if not ids:
            return []
        records = self._client.retrieve(self.collection, ids=list(ids), with_payload=with_payload,
                                        with_vectors=vector_selection(with_vectors))
        return in_requested_order(records, ids)

    @_missing_collection_is_a_store_error
    def scroll(self, filter: SearchFilter | None = None, limit: int = 1000, offset: str | None = None,
               with_payload: bool = True, with_vectors: VectorSelection = False,
               ) -> tuple[list[StorePoint], str | None]:
        spec = self.describe() if with_vectors else None
        if spec is not None:
            # Fewer points than `limit` when their vectors would make the answer larger than a request
            # may be (one point of the 2B model's 17 vectors is up to 0.65 MB of JSON); the offset
            # says where the next page starts, so iter_points (snapshot create, check) reads them all.
            names = len(spec.vector_names) if with_vectors is True else len(list(with_vectors))  # type: ignore[arg-type]
            point_bytes = names * spec.dim * _FLOAT_JSON_BYTES + _PAYLOAD_JSON_BYTES
            limit = max(1, min(limit, self._request_budget // point_bytes))
        records, next_offset = self._client.scroll(
            self.collection, scroll_filter=server_filter(filter), limit=limit, offset=offset,
            with_payload=with_payload, with_vectors=vector_selection(with_vectors))
        points = [store_point(r) for r in records]
        return points, None if next_offset is None else str(next_offset)

    @_missing_collection_is_a_store_error
    def points_missing_vector(self, name: str) -> list[StorePoint]:
        """Qdrant's has-vector filter: the server sends only the points lacking it, with no vector."""
        lacking = models.Filter(must_not=[models.HasVectorCondition(has_vector=name)])
        points: list[StorePoint] = []
        offset: models.ExtendedPointId | None = None
        while True:
            records, offset = self._client.scroll(self.collection, scroll_filter=lacking, limit=1000, offset=offset,
                                                  with_payload=["isic_id"], with_vectors=False)
            points += [store_point(r) for r in records]
            if offset is None:
                return points

    @_missing_collection_is_a_store_error
    def count(self, filter: SearchFilter | None = None) -> int:
        return int(self._client.count(self.collection, count_filter=server_filter(filter), exact=True).count)

    # --- maintenance ---------------------------------------------------------------------
    def optimize(self) -> bool:
        """A Qdrant server builds its indexes in the background: nothing to do here."""
        return False
