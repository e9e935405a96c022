"""The query side of a search: its vectors, the images behind them, and the filter it implies.

A query is an uploaded image (the model runs once) or an existing isic_id (its stored vectors are
reused; the model runs only for vectors the collection does not hold). Candidates whose attribute
vectors are not stored are re-embedded from their image (payload image_ref) with the same helpers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from dermground.platform.attributes import ATTRIBUTE_NAMES, get_attribute
from dermground.platform.candidate_embedding import UnreadableCandidate, read_point_image
from dermground.platform.embedder_provider import EmbedderProvider
from dermground.platform.search_request import (
    ModelUnavailableError,
    QueryNotFoundError,
    SearchError,
    SearchMode,
    SearchRequest,
)
from dermground.platform.search_results import payload_number
from dermground.platform.settings import Settings
from dermground.platform.names import unicode_spellings
from dermground.platform.store import IMAGE_VECTOR, SearchFilter, StorePoint, VectorStore, point_id
from dermground.platform.store.base import VectorSelection


@dataclass
class QueryVectors:
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


def require_model(provider: EmbedderProvider | None, store: VectorStore, why: str) -> EmbedderProvider:
    """The provider, if it holds the model the collection was ingested with; else ModelUnavailableError."""
    if provider is None:
        raise ModelUnavailableError(f"{why} needs the model, and none is configured; set DERMGROUND_MODEL_DIR "
                                    "(and DERMGROUND_ADAPTER_DIR) to the model the collection was ingested with")
    expected = store.require_spec().fingerprint
    if not provider.provide(expected):
        raise ModelUnavailableError(
            f"{why} needs the model the collection {store.collection!r} was ingested with (fingerprint "
            f"{expected}); the loaded model has fingerprint {provider.fingerprint}. Point --model/--adapter "
            "at that model, or query by isic_id with a mode whose vectors are stored.")
    return provider


def find_lesion(store: VectorStore, isic_id: str, with_vectors: VectorSelection = False) -> StorePoint | None:
    """The stored point (with its payload) of an isic_id, also when it is stored in the other Unicode
    normal form than the one asked for (NFC as typed, NFD from a CSV written on macOS); None if absent."""
    found = store.retrieve([point_id(spelling) for spelling in unicode_spellings(isic_id)], with_payload=True,
                           with_vectors=with_vectors)
    return found[0] if found else None  # in the order asked: the exact spelling first


def embed_to_vectors(provider: EmbedderProvider, images: Sequence[Image.Image], attributes: Sequence[str],
                     include_image: bool) -> list[dict[str, np.ndarray]]:
    """Per image, its named vectors (`image` if asked, and `q_<a>` for each attribute)."""
    batch = provider.embed(images, list(attributes), include_image)
    out: list[dict[str, np.ndarray]] = [{} for _ in images]
    for i in range(len(images)):
        if include_image and batch.h_im is not None:
            out[i][IMAGE_VECTOR] = batch.h_im[i]
        for name in attributes:
            out[i][get_attribute(name).vector_name] = batch.h_im_a[name][i]
    return out


def load_point_image(payload: Mapping[str, object], max_pixels: int) -> Image.Image:
    """The stored image of a point (its payload image_ref), decoded; SearchError if it cannot be read."""
    try:
        return read_point_image(payload, max_pixels)
    except UnreadableCandidate as exc:
        raise SearchError(str(exc)) from None


def _gated(image: Image.Image, max_pixels: int) -> Image.Image:
    """The image gate for a query image handed in as pixels (uploads were gated when decoded)."""
    from dermground.platform.images import ImageRejected, check_decoded

    try:
        return check_decoded(image, max_pixels=max_pixels)
    except ImageRejected as exc:
        raise SearchError(f"the query image is refused: {exc}") from None


def query_vectors(request: SearchRequest, attributes: tuple[str, ...], store: VectorStore,
                  provider: EmbedderProvider | None, settings: Settings) -> QueryVectors:
    """The vectors the request's mode needs: embedded from an upload, or read (and completed) for an isic_id."""
    needed = _needed_vectors(request.mode, attributes)
    if request.image is not None:
        image = _gated(request.image, settings.max_image_pixels)
        model = require_model(provider, store, "searching by an uploaded image")
        vectors = embed_to_vectors(model, [image], attributes if request.mode is not SearchMode.image else (),
                                   include_image=IMAGE_VECTOR in needed)[0]
        return QueryVectors(vectors, patient_id=request.query_patient_id, model_ran=True)
    assert request.isic_id is not None
    point = find_lesion(store, request.isic_id, with_vectors=needed)
    if point is None:
        raise QueryNotFoundError(f"isic_id {request.isic_id!r} is not in collection {store.collection!r}")
    # The stored spelling of the id: the query point is excluded from its hits by it.
    stored_id = str(point.payload.get("isic_id") or request.isic_id)
    query = QueryVectors({n: v for n, v in point.vectors.items() if n in needed}, isic_id=stored_id,
                         patient_id=str(point.payload.get("patient_id")) if point.payload.get("patient_id") else None,
                         truth={a: payload_number(point.payload.get(a)) for a in ATTRIBUTE_NAMES})
    missing = [n for n in needed if n not in query.vectors]
    if missing:  # e.g. an `image`-only collection: embed the stored image once
        model = require_model(provider, store, f"vectors {missing} of {request.isic_id!r} (not stored)")
        image = load_point_image(point.payload, settings.max_image_pixels)
        wanted = [a for a in attributes if get_attribute(a).vector_name in missing]
        fresh = embed_to_vectors(model, [image], wanted, include_image=IMAGE_VECTOR in missing)[0]
        query.vectors.update(fresh)
        query.model_ran = True
        if request.cache_vectors:
            store.update_vectors({point.id: fresh})
            query.cached = 1
    return query


def effective_filter(request: SearchRequest, query: QueryVectors) -> SearchFilter:
    """The request's filter plus the exclusions of the query's own patient and image."""
    flt = request.filter
    if request.exclude_query_patient:
        if not query.patient_id:
            raise SearchError("exclude_query_patient needs the query's patient: query by isic_id, or give "
                              "query_patient_id with the uploaded image", field="exclude_query_patient")
        flt = replace(flt, exclude_patient_ids=(*flt.exclude_patient_ids, query.patient_id))
    if request.exclude_query_image and query.isic_id is not None:
        flt = replace(flt, exclude_ids=(*flt.exclude_ids, point_id(query.isic_id)))
    return flt
