"""Search: one entry, `search()`, for every retrieval mode.

The parts, each in its own module:
- search_request.py:   SearchMode, SearchRequest, its checks, the SearchError family, DEFAULT_B.
- search_query.py:     the query's vectors (an uploaded image through the gate and the model, or an
                       isic_id's stored vectors) and the filter it implies.
- search_modes.py:     the four modes (image, image_text, hierarchical, prefetch).
- search_results.py:   SearchHit, SearchResponse and the fused ranking over several attributes.
- embedder_provider.py: the model, loaded on first use, one forward pass at a time.
"""

from __future__ import annotations

import time
from dataclasses import replace

from dermground.platform.embedder_provider import EmbedderProvider
from dermground.platform.search_modes import search_hierarchical, search_image, search_image_text, search_prefetch
from dermground.platform.search_query import effective_filter, query_vectors
from dermground.platform.search_request import DEFAULT_B, SearchMode, SearchRequest, validate_request
from dermground.platform.search_results import SearchResponse
from dermground.platform.settings import Settings
from dermground.platform.store import VectorStore


def search(request: SearchRequest, *, store: VectorStore, embedder: EmbedderProvider | None,
           settings: Settings) -> SearchResponse:
    """Run one search in any mode; raises SearchError (or a subclass) for requests it cannot serve."""
    # Every step reads (and caches into) one version, even when the collection is switched meanwhile;
    # a version dropped meanwhile (a server) runs the search again on the live one.
    return store.run_pinned(lambda version: _search(request, version, embedder, settings))


def _search(request: SearchRequest, store: VectorStore, embedder: EmbedderProvider | None,
            settings: Settings) -> SearchResponse:
    started = time.perf_counter()
    attributes = validate_request(request, settings)
    # b below k would return fewer than k hits: the candidate pool is never smaller than k.
    request = replace(request, b=max(request.k, min(DEFAULT_B, settings.max_b) if request.b is None else request.b))
    store.require_spec()
    query = query_vectors(request, attributes, store, embedder, settings)
    flt = effective_filter(request, query)
    if request.mode is SearchMode.image:
        ranked = search_image(store, request, query, flt)
    elif request.mode is SearchMode.image_text:
        ranked = search_image_text(store, request, attributes, query, flt)
    elif request.mode is SearchMode.prefetch:
        ranked = search_prefetch(store, request, attributes, query, flt)
    else:
        ranked = search_hierarchical(store, request, attributes, query, flt, embedder, settings)
    return SearchResponse(
        mode=request.mode, attributes=attributes, hits=ranked.hits, query_isic_id=query.isic_id,
        query_patient_id=query.patient_id, query_attributes=query.truth,
        model_ran=query.model_ran or ranked.model_ran, candidates=ranked.candidates,
        reembedded=ranked.reembedded, cached=ranked.cached + query.cached, seconds=time.perf_counter() - started)


__all__ = ["search"]
