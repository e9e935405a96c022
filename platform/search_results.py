"""What a search answers: hits and the response, and the fused ranking that shapes them.

Several attributes in one query (the paper's future work): the prompts have no multi-attribute
question yet, so rankings are fused by the **mean of the per-attribute cosines** over one shared
candidate set. Every candidate is scored on every attribute (no missing ranks), which rewards
images close in all the chosen attributes at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dermground.platform.attributes import ATTRIBUTE_NAMES, get_attribute
from dermground.platform.search_request import SearchMode


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


@dataclass
class Ranked:
    """One mode's top-k and what it took: candidates ranked, re-embedded, written back."""

    hits: list[SearchHit]
    candidates: int
    reembedded: int = 0
    cached: int = 0
    model_ran: bool = False


def payload_number(value: object) -> float | None:
    """A payload value as a float; None for a missing or non-numeric one (booleans included)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def hit_of(payload: Mapping[str, object], score: float, attribute_scores: dict[str, float] | None = None) -> SearchHit:
    """A SearchHit from a point's payload and its score."""
    return SearchHit(isic_id=str(payload.get("isic_id")), score=score, payload=dict(payload),
                     attributes={a: payload_number(payload.get(a)) for a in ATTRIBUTE_NAMES},
                     attribute_scores=attribute_scores or {})


def _unit(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def fused_ranking(payloads: Sequence[Mapping[str, object]], candidate_vectors: Sequence[Mapping[str, np.ndarray]],
                  query_vectors: Mapping[str, np.ndarray], attributes: Sequence[str], k: int) -> list[SearchHit]:
    """Rank candidates by the mean over attributes of cosine(query h_im_a, candidate h_im_a)."""
    if not payloads:
        return []
    per_attribute: dict[str, np.ndarray] = {}
    for name in attributes:
        vector_name = get_attribute(name).vector_name
        matrix = _unit(np.stack([v[vector_name] for v in candidate_vectors]))
        per_attribute[name] = matrix @ _unit(query_vectors[vector_name])
    mean = np.mean(np.stack(list(per_attribute.values())), axis=0)
    # Stable sort: equal scores keep the candidate order (the image-similarity order).
    order = np.argsort(-mean, kind="stable")[:k]
    return [hit_of(payloads[i], float(mean[i]), {a: float(s[i]) for a, s in per_attribute.items()}) for i in order]
