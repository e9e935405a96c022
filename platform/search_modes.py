"""The four search modes (paper §3.3 and beyond), each ranking a top-k from the query's vectors.

- image:        h_im(query), top-k on the `image` vectors.
- image_text:   h_im_a(query), top-k on `q_<a>` (paper method a).
- hierarchical: top-b on `image` (filtered), then those b candidates ranked by cosine between
                their h_im_a and the query's (paper method b). A candidate's `q_<a>` is taken from
                the store when present, else re-embedded from its image (payload image_ref); with
                `cache_vectors` the re-embedded vectors are written back, so a collection may hold
                `image` vectors only and repeated queries get cheaper. Candidates are read and prepared
                in a thread pool while the model embeds the batch before (platform/candidate_embedding.py).
- prefetch:     the store's prefetch query: top-b on `image`, rescored by the stored `q_<a>`.

With several attributes the candidate set is shared and the ranking fused
(dermground.platform.search_results.fused_ranking): image_text -> the union of each attribute's
top-b on `q_<a>`; hierarchical and prefetch -> the top-b on `image`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dermground.platform.attributes import get_attribute
from dermground.platform.candidate_embedding import embed_candidates
from dermground.platform.embedder_provider import EmbedderProvider
from dermground.platform.search_query import QueryVectors, require_model
from dermground.platform.search_request import SearchRequest
from dermground.platform.search_results import Ranked, fused_ranking, hit_of
from dermground.platform.settings import Settings
from dermground.platform.store import IMAGE_VECTOR, SearchFilter, VectorStore


def search_image(store: VectorStore, request: SearchRequest, query: QueryVectors, flt: SearchFilter) -> Ranked:
    """Top-k on the `image` vectors."""
    hits = store.query(IMAGE_VECTOR, query.vectors[IMAGE_VECTOR], request.k, flt)
    return Ranked([hit_of(h.payload or {}, h.score) for h in hits], len(hits))


def search_image_text(store: VectorStore, request: SearchRequest, attributes: Sequence[str], query: QueryVectors,
                      flt: SearchFilter) -> Ranked:
    """Top-k on `q_<a>`; with several attributes, the union of their top-b ranked by the fused score."""
    if len(attributes) == 1:
        vector_name = get_attribute(attributes[0]).vector_name
        hits = store.query(vector_name, query.vectors[vector_name], request.k, flt)
        return Ranked([hit_of(h.payload or {}, h.score, {attributes[0]: h.score}) for h in hits], len(hits))
    pool = max(request.b, request.k)
    ids: dict[str, None] = {}
    for name in attributes:
        vector_name = get_attribute(name).vector_name
        for h in store.query(vector_name, query.vectors[vector_name], pool, flt, with_payload=False):
            ids.setdefault(h.id, None)
    vector_names = [get_attribute(a).vector_name for a in attributes]
    points = store.retrieve(list(ids), with_payload=True, with_vectors=vector_names)
    points = [p for p in points if all(n in p.vectors for n in vector_names)]
    ranked = fused_ranking([p.payload for p in points], [p.vectors for p in points], query.vectors, attributes,
                           request.k)
    return Ranked(ranked, len(points))


def search_prefetch(store: VectorStore, request: SearchRequest, attributes: Sequence[str], query: QueryVectors,
                    flt: SearchFilter) -> Ranked:
    """Top-b on `image` rescored by the stored `q_<a>` (fused over several attributes)."""
    if len(attributes) == 1:
        vector_name = get_attribute(attributes[0]).vector_name
        hits = store.prefetch_rescore(IMAGE_VECTOR, query.vectors[IMAGE_VECTOR], request.b, vector_name,
                                      query.vectors[vector_name], request.k, flt)
        return Ranked([hit_of(h.payload or {}, h.score, {attributes[0]: h.score}) for h in hits],
                      min(request.b, store.count(flt)))
    vector_names = [get_attribute(a).vector_name for a in attributes]
    hits = store.query(IMAGE_VECTOR, query.vectors[IMAGE_VECTOR], request.b, flt, with_vectors=vector_names)
    hits = [h for h in hits if h.vectors and all(n in h.vectors for n in vector_names)]
    ranked = fused_ranking([h.payload or {} for h in hits], [h.vectors or {} for h in hits], query.vectors,
                           attributes, request.k)
    return Ranked(ranked, len(hits))


def search_hierarchical(store: VectorStore, request: SearchRequest, attributes: Sequence[str], query: QueryVectors,
                        flt: SearchFilter, provider: EmbedderProvider | None, settings: Settings) -> Ranked:
    """Top-b on `image`, ranked by h_im_a; candidates without stored `q_<a>` are re-embedded from their image."""
    vector_names = [get_attribute(a).vector_name for a in attributes]
    hits = store.query(IMAGE_VECTOR, query.vectors[IMAGE_VECTOR], request.b, flt, with_vectors=vector_names)
    vectors: list[dict[str, np.ndarray]] = [dict(h.vectors or {}) for h in hits]
    stale = [i for i, v in enumerate(vectors) if not all(n in v for n in vector_names)]
    cached = reembedded = 0
    if stale:
        model = require_model(provider, store, f"hierarchical search ({len(stale)} candidates without stored "
                                               "attribute vectors)")
        found = embed_candidates(model, [hits[i].payload or {} for i in stale], attributes,
                                 max_pixels=settings.max_image_pixels)
        fresh = {stale[j]: new for j, new in found.vectors.items()}
        reembedded = len(fresh)
        for i, new in fresh.items():
            vectors[i].update(new)
        if request.cache_vectors and fresh:
            store.update_vectors({hits[i].id: new for i, new in fresh.items()})
            cached = len(fresh)
        keep = [i for i in range(len(hits)) if all(n in vectors[i] for n in vector_names)]
        hits, vectors = [hits[i] for i in keep], [vectors[i] for i in keep]
    ranked = fused_ranking([h.payload or {} for h in hits], vectors, query.vectors, attributes, request.k)
    return Ranked(ranked, len(hits), reembedded=reembedded, cached=cached, model_ran=bool(stale))
