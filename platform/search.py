"""Search (paper §3.3 and beyond): one entry, `search()`, for every retrieval mode.

Modes (SearchMode):
- image:        h_im(query), top-k on the `image` vectors.
- image_text:   h_im_a(query), top-k on `q_<a>` (paper method a).
- hierarchical: top-b on `image` (filtered), then those b candidates ranked by cosine between
                their h_im_a and the query's (paper method b). A candidate's `q_<a>` is taken from
                the store when present, else re-embedded from its image (payload image_ref); with
                `cache_vectors` the re-embedded vectors are written back, so a collection may hold
                `image` vectors only and repeated queries get cheaper.
- prefetch:     the store's prefetch query: top-b on `image`, rescored by the stored `q_<a>`.

Several attributes in one query (the paper's future work): the prompts have no multi-attribute
question yet, so rankings are fused by the **mean of the per-attribute cosines** over one shared
candidate set: image_text -> the union of each attribute's top-b on `q_<a>`; hierarchical and
prefetch -> the top-b on `image`. Every candidate is scored on every attribute (no missing
ranks), which rewards images close in all the chosen attributes at once.

A query is an uploaded image (the model runs once) or an existing isic_id (its stored vectors are
reused; the model runs only for vectors the collection does not hold).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from dermground.platform.attributes import ATTRIBUTE_NAMES, get_attribute
from dermground.platform.settings import Settings
from dermground.platform.store import IMAGE_VECTOR, SearchFilter, StoreError, VectorStore, point_id

DEFAULT_B = 200
log = logging.getLogger("dermground.search")


class SearchMode(str, enum.Enum):
    """How the top-k is found (see the module docstring)."""

    image = "image"
    image_text = "image_text"
    hierarchical = "hierarchical"
    prefetch = "prefetch"


class SearchError(ValueError):
    """A search request that cannot be served as asked; the message says why and what to do."""


class QueryNotFoundError(SearchError):
    """The query isic_id is not in the collection."""


class ModelUnavailableError(SearchError):
    """The query needs the model (an uploaded image, or vectors the store lacks) and none fits."""


@dataclass(frozen=True)
class SearchRequest:
    """One search. Exactly one of `image` / `isic_id`; attributes needed by every mode but image.

    `filter` restricts the candidates (metadata equality/in, numeric ranges, split);
    `exclude_query_patient` drops the query's patient (known from the payload for an isic_id,
    or given as `query_patient_id` for an upload); `exclude_query_image` drops the query point
    itself when searching by isic_id.
    """

    mode: SearchMode = SearchMode.image
    attributes: tuple[str, ...] = ()
    image: Image.Image | None = None
    isic_id: str | None = None
    k: int = 10
    b: int | None = None  # None: DEFAULT_B, capped at settings.max_b
    filter: SearchFilter = field(default_factory=SearchFilter)
    exclude_query_patient: bool = False
    query_patient_id: str | None = None
    exclude_query_image: bool = True
    cache_vectors: bool = False


@dataclass(frozen=True)
class SearchHit:
    """A retrieved lesion: cosine score (mean over attributes when fused), payload, attribute values."""

    isic_id: str
    score: float
    payload: dict[str, object]
    attributes: dict[str, float | None]
    attribute_scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResponse:
    """The top-k and what it cost."""

    mode: SearchMode
    attributes: tuple[str, ...]
    hits: list[SearchHit]
    query_isic_id: str | None
    query_patient_id: str | None
    query_attributes: dict[str, float | None]  # ground truth of an isic_id query; empty for uploads
    model_ran: bool  # the model embedded the query or candidates
    candidates: int  # images ranked in the final step (b for hierarchical/prefetch)
    reembedded: int  # candidates embedded on the fly (hierarchical)
    cached: int  # re-embedded vectors written back to the store
    seconds: float


class EmbedderProvider:
    """Gives search an Embedder on first use and runs one model call at a time.

    The model uses every core for one forward pass, so concurrent requests are serialised here
    instead of oversubscribing the CPU; `load` runs once, lazily (queries by isic_id whose
    vectors are stored never need it).
    """

    def __init__(self, load: Callable[[], object]) -> None:
        self._load = load
        self._embedder = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, embedder: object) -> EmbedderProvider:
        """A provider around an already built Embedder."""
        provider = cls(lambda: embedder)
        provider._embedder = embedder
        return provider

    def embedder(self):  # noqa: ANN201 - dermground.platform.embed.Embedder (imported lazily: torch)
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = self._load()
        return self._embedder

    @property
    def fingerprint(self) -> str:
        return self.embedder().backbone.fingerprint

    def embed(self, images: Sequence[Image.Image], attributes: Sequence[str], include_image: bool):  # noqa: ANN201
        return self.run(lambda embedder: embedder.embed(images, attributes, include_image=include_image))

    def run(self, work: Callable[[object], object]) -> object:
        """work(embedder) with the model to itself (e.g. attribute prediction on its backbone)."""
        embedder = self.embedder()
        with self._lock:
            return work(embedder)


def _unit(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def _validate(request: SearchRequest, settings: Settings) -> tuple[str, ...]:
    if (request.image is None) == (request.isic_id is None):
        raise SearchError("give exactly one query: an image or an isic_id")
    if not 1 <= request.k <= settings.max_k:
        raise SearchError(f"k must be between 1 and {settings.max_k} (DERMGROUND_MAX_K), got {request.k}")
    if request.b is not None and not 1 <= request.b <= settings.max_b:
        raise SearchError(f"b must be between 1 and {settings.max_b} (DERMGROUND_MAX_B), got {request.b}")
    names: list[str] = []
    for name in request.attributes:
        try:
            canonical = get_attribute(name).name
        except KeyError as exc:
            raise SearchError(str(exc.args[0])) from None
        if canonical not in names:
            names.append(canonical)
    if request.mode is SearchMode.image and names:
        raise SearchError("mode 'image' ranks by h_im and takes no attributes; use image_text, hierarchical "
                          "or prefetch to search by an attribute")
    if request.mode is not SearchMode.image and not names:
        raise SearchError(f"mode {request.mode.value!r} needs at least one attribute; known: {', '.join(ATTRIBUTE_NAMES)}")
    return tuple(names)


@dataclass
class _Query:
    """The query's vectors (name -> vector) and what is known about it."""

    vectors: dict[str, np.ndarray]
    isic_id: str | None = None
    patient_id: str | None = None
    truth: dict[str, float | None] = field(default_factory=dict)
    model_ran: bool = False
    cached: int = 0


def _needed_vectors(mode: SearchMode, attributes: Sequence[str]) -> list[str]:
    names = [] if mode is SearchMode.image_text else [IMAGE_VECTOR]
    if mode is not SearchMode.image:
        names += [get_attribute(a).vector_name for a in attributes]
    return names


def _require_model(provider: EmbedderProvider | None, store: VectorStore, why: str) -> EmbedderProvider:
    if provider is None:
        raise ModelUnavailableError(f"{why} needs the model, and none is configured; set DERMGROUND_MODEL_DIR "
                                    "(and DERMGROUND_ADAPTER_DIR) to the model the collection was ingested with")
    expected = store.require_spec().fingerprint
    if provider.fingerprint != expected:
        raise ModelUnavailableError(
            f"{why} needs the model the collection {store.collection!r} was ingested with (fingerprint "
            f"{expected}); the loaded model has fingerprint {provider.fingerprint}. Point --model/--adapter "
            "at that model, or query by isic_id with a mode whose vectors are stored.")
    return provider


def _embed_to_vectors(provider: EmbedderProvider, images: Sequence[Image.Image], attributes: Sequence[str],
                      include_image: bool) -> list[dict[str, np.ndarray]]:
    batch = provider.embed(images, list(attributes), include_image)
    out: list[dict[str, np.ndarray]] = [{} for _ in images]
    for i in range(len(images)):
        if include_image and batch.h_im is not None:
            out[i][IMAGE_VECTOR] = batch.h_im[i]
        for name in attributes:
            out[i][get_attribute(name).vector_name] = batch.h_im_a[name][i]
    return out


def _load_point_image(payload: Mapping[str, object], max_pixels: int) -> Image.Image:
    from dermground.platform.image_sources import load_image_bytes
    from dermground.platform.images import ImageRejected as ImageDecodeError
    from dermground.platform.images import decode_image

    ref = payload.get("image_ref")
    who = payload.get("isic_id")
    if not isinstance(ref, str):
        raise SearchError(f"point {who!r} has no image_ref in its payload; re-ingest it")
    try:
        return decode_image(load_image_bytes(ref), max_pixels=max_pixels)
    except (ImageDecodeError, OSError, KeyError) as exc:
        raise SearchError(f"cannot read the image of {who!r} ({ref}): {exc}") from None


def _gated(image: Image.Image, max_pixels: int) -> Image.Image:
    """The image gate for a query image handed in as pixels (uploads were gated when decoded)."""
    from dermground.platform.images import ImageRejected, check_decoded

    try:
        return check_decoded(image, max_pixels=max_pixels)
    except ImageRejected as exc:
        raise SearchError(f"the query image is refused: {exc}") from None


def _query_vectors(request: SearchRequest, attributes: tuple[str, ...], store: VectorStore,
                   provider: EmbedderProvider | None, settings: Settings) -> _Query:
    needed = _needed_vectors(request.mode, attributes)
    if request.image is not None:
        image = _gated(request.image, settings.max_image_pixels)
        model = _require_model(provider, store, "searching by an uploaded image")
        vectors = _embed_to_vectors(model, [image], attributes if request.mode is not SearchMode.image else (),
                                    include_image=IMAGE_VECTOR in needed)[0]
        return _Query(vectors, patient_id=request.query_patient_id, model_ran=True)
    assert request.isic_id is not None
    found = store.retrieve([point_id(request.isic_id)], with_payload=True, with_vectors=needed)
    if not found:
        raise QueryNotFoundError(f"isic_id {request.isic_id!r} is not in collection {store.collection!r}")
    point = found[0]
    query = _Query({n: v for n, v in point.vectors.items() if n in needed}, isic_id=request.isic_id,
                   patient_id=str(point.payload.get("patient_id")) if point.payload.get("patient_id") else None,
                   truth={a: _number(point.payload.get(a)) for a in ATTRIBUTE_NAMES})
    missing = [n for n in needed if n not in query.vectors]
    if missing:  # e.g. an `image`-only collection: embed the stored image once
        model = _require_model(provider, store, f"vectors {missing} of {request.isic_id!r} (not stored)")
        image = _load_point_image(point.payload, settings.max_image_pixels)
        wanted = [a for a in attributes if get_attribute(a).vector_name in missing]
        fresh = _embed_to_vectors(model, [image], wanted, include_image=IMAGE_VECTOR in missing)[0]
        query.vectors.update(fresh)
        query.model_ran = True
        if request.cache_vectors:
            store.update_vectors({point.id: fresh})
            query.cached = 1
    return query


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _effective_filter(request: SearchRequest, query: _Query) -> SearchFilter:
    flt = request.filter
    if request.exclude_query_patient:
        if not query.patient_id:
            raise SearchError("exclude_query_patient needs the query's patient: query by isic_id, or give "
                              "query_patient_id with the uploaded image")
        flt = replace(flt, exclude_patient_ids=(*flt.exclude_patient_ids, query.patient_id))
    if request.exclude_query_image and query.isic_id is not None:
        flt = replace(flt, exclude_ids=(*flt.exclude_ids, point_id(query.isic_id)))
    return flt


def _fused(candidates: Sequence[tuple[str, dict[str, object]]], candidate_vectors: Sequence[Mapping[str, np.ndarray]],
           query: _Query, attributes: Sequence[str], k: int) -> list[SearchHit]:
    """Rank candidates by the mean over attributes of cosine(query h_im_a, candidate h_im_a)."""
    if not candidates:
        return []
    per_attribute: dict[str, np.ndarray] = {}
    for name in attributes:
        vector_name = get_attribute(name).vector_name
        matrix = _unit(np.stack([v[vector_name] for v in candidate_vectors]))
        per_attribute[name] = matrix @ _unit(query.vectors[vector_name])
    mean = np.mean(np.stack(list(per_attribute.values())), axis=0)
    # Stable sort: equal scores keep the candidate order (the image-similarity order).
    order = np.argsort(-mean, kind="stable")[:k]
    return [_hit(candidates[i][1], float(mean[i]), {a: float(s[i]) for a, s in per_attribute.items()})
            for i in order]


def _hit(payload: Mapping[str, object], score: float, attribute_scores: dict[str, float] | None = None) -> SearchHit:
    return SearchHit(isic_id=str(payload.get("isic_id")), score=score, payload=dict(payload),
                     attributes={a: _number(payload.get(a)) for a in ATTRIBUTE_NAMES},
                     attribute_scores=attribute_scores or {})


@dataclass
class _Ranked:
    hits: list[SearchHit]
    candidates: int
    reembedded: int = 0
    cached: int = 0
    model_ran: bool = False


def _search_image_text(store: VectorStore, request: SearchRequest, attributes: Sequence[str], query: _Query,
                       flt: SearchFilter) -> _Ranked:
    if len(attributes) == 1:
        vector_name = get_attribute(attributes[0]).vector_name
        hits = store.query(vector_name, query.vectors[vector_name], request.k, flt)
        return _Ranked([_hit(h.payload or {}, h.score, {attributes[0]: h.score}) for h in hits], len(hits))
    pool = max(request.b, request.k)
    ids: dict[str, None] = {}
    for name in attributes:
        vector_name = get_attribute(name).vector_name
        for h in store.query(vector_name, query.vectors[vector_name], pool, flt, with_payload=False):
            ids.setdefault(h.id, None)
    vector_names = [get_attribute(a).vector_name for a in attributes]
    points = store.retrieve(list(ids), with_payload=True, with_vectors=vector_names)
    points = [p for p in points if all(n in p.vectors for n in vector_names)]
    ranked = _fused([(p.id, p.payload) for p in points], [p.vectors for p in points], query, attributes, request.k)
    return _Ranked(ranked, len(points))


def _search_prefetch(store: VectorStore, request: SearchRequest, attributes: Sequence[str], query: _Query,
                     flt: SearchFilter) -> _Ranked:
    if len(attributes) == 1:
        vector_name = get_attribute(attributes[0]).vector_name
        hits = store.prefetch_rescore(IMAGE_VECTOR, query.vectors[IMAGE_VECTOR], request.b, vector_name,
                                      query.vectors[vector_name], request.k, flt)
        return _Ranked([_hit(h.payload or {}, h.score, {attributes[0]: h.score}) for h in hits],
                       min(request.b, store.count(flt)))
    vector_names = [get_attribute(a).vector_name for a in attributes]
    hits = store.query(IMAGE_VECTOR, query.vectors[IMAGE_VECTOR], request.b, flt, with_vectors=vector_names)
    hits = [h for h in hits if h.vectors and all(n in h.vectors for n in vector_names)]
    ranked = _fused([(h.id, h.payload or {}) for h in hits], [h.vectors or {} for h in hits], query, attributes, request.k)
    return _Ranked(ranked, len(hits))


def _search_hierarchical(store: VectorStore, request: SearchRequest, attributes: Sequence[str], query: _Query,
                         flt: SearchFilter, provider: EmbedderProvider | None, settings: Settings) -> _Ranked:
    vector_names = [get_attribute(a).vector_name for a in attributes]
    hits = store.query(IMAGE_VECTOR, query.vectors[IMAGE_VECTOR], request.b, flt, with_vectors=vector_names)
    vectors: list[dict[str, np.ndarray]] = [dict(h.vectors or {}) for h in hits]
    stale = [i for i, v in enumerate(vectors) if not all(n in v for n in vector_names)]
    cached = reembedded = 0
    if stale:
        model = _require_model(provider, store, f"hierarchical search ({len(stale)} candidates without stored "
                                                "attribute vectors)")
        images, readable = [], []
        for i in stale:
            try:
                images.append(_load_point_image(hits[i].payload or {}, settings.max_image_pixels))
                readable.append(i)
            except SearchError as exc:  # one unreadable image must not fail every query near it
                log.warning("hierarchical search skips a candidate: %s", exc)
        fresh = _embed_to_vectors(model, images, attributes, include_image=False) if images else []
        reembedded = len(fresh)
        for i, new in zip(readable, fresh, strict=True):
            vectors[i].update(new)
        if request.cache_vectors and fresh:
            store.update_vectors({hits[i].id: new for i, new in zip(readable, fresh, strict=True)})
            cached = len(fresh)
        keep = [i for i in range(len(hits)) if all(n in vectors[i] for n in vector_names)]
        hits, vectors = [hits[i] for i in keep], [vectors[i] for i in keep]
    ranked = _fused([(h.id, h.payload or {}) for h in hits], vectors, query, attributes, request.k)
    return _Ranked(ranked, len(hits), reembedded=reembedded, cached=cached, model_ran=bool(stale))


def search(request: SearchRequest, *, store: VectorStore, embedder: EmbedderProvider | None,
           settings: Settings) -> SearchResponse:
    """Run one search in any mode; raises SearchError (or a subclass) for requests it cannot serve."""
    started = time.perf_counter()
    attributes = _validate(request, settings)
    # b below k would return fewer than k hits: the candidate pool is never smaller than k.
    request = replace(request, b=max(request.k, min(DEFAULT_B, settings.max_b) if request.b is None else request.b))
    store.require_spec()
    query = _query_vectors(request, attributes, store, embedder, settings)
    flt = _effective_filter(request, query)
    if request.mode is SearchMode.image:
        hits = store.query(IMAGE_VECTOR, query.vectors[IMAGE_VECTOR], request.k, flt)
        ranked = _Ranked([_hit(h.payload or {}, h.score) for h in hits], len(hits))
    elif request.mode is SearchMode.image_text:
        ranked = _search_image_text(store, request, attributes, query, flt)
    elif request.mode is SearchMode.prefetch:
        ranked = _search_prefetch(store, request, attributes, query, flt)
    else:
        ranked = _search_hierarchical(store, request, attributes, query, flt, embedder, settings)
    return SearchResponse(
        mode=request.mode, attributes=attributes, hits=ranked.hits, query_isic_id=query.isic_id,
        query_patient_id=query.patient_id, query_attributes=query.truth,
        model_ran=query.model_ran or ranked.model_ran, candidates=ranked.candidates,
        reembedded=ranked.reembedded, cached=ranked.cached + query.cached, seconds=time.perf_counter() - started)


__all__ = [
    "DEFAULT_B", "EmbedderProvider", "ModelUnavailableError", "QueryNotFoundError", "SearchError", "SearchHit",
    "SearchMode", "SearchRequest", "SearchResponse", "StoreError", "search",
]
