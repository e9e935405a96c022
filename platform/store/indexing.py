"""The embedded store's HNSW index: when to build it, how to search it, what building it cost.

The embedded engine never indexes in the background: search is exact brute force until
`optimize()` builds the graph (HNSW on spec.hnsw_on only; ~1-2.5 min at 100,000 points on 2
cores). Ingest calls `build_index_if_large` at its finish, so a collection that has grown past
`index_min_points` is searched through its index from then on, and a small one stays exact
(brute force over a few thousand points costs less than a millisecond or two).
A filtered search uses the payload indexes either way: when a filter matches few points
(below the engine's full-scan threshold, 10,000 points of 256 floats) the engine scores
exactly those points, with or without the graph; HNSW only serves broader filters.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import qdrant_edge as qe

from dermground.platform.store.base import VectorStore

# Candidates an HNSW search keeps (docs/BENCHMARKS.md, "The store's HNSW index"): on the tiny
# model's embeddings recall@10 was 1.000 from 64 up, on random 256-d vectors 0.52 at 128 and 0.66
# at 256 (50 % filter). 128 is a middle: raise it (setting store_hnsw_ef) for harder embeddings.
DEFAULT_HNSW_EF = 128  # the default of settings.store_hnsw_ef
# Below ~20,000 points of 256 floats a broad filter still matches fewer points than the engine's
# full-scan threshold, so searches take the exact path anyway and an index cannot pay for itself.
DEFAULT_INDEX_MIN_POINTS = 20_000  # the default of settings.store_index_min_points


@dataclass(frozen=True)
class IndexReport:
    """What `build_index_if_large` did: whether it built, how long it took, over how many points."""

    built: bool
    seconds: float
    points: int
    indexed_points: int
    reason: str


def check_index_min_points(value: int) -> int:
    """Validate the threshold (0 = never index); returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"index_min_points must be a whole number >= 0 (0 = never build the index), got {value!r}")
    return value


def search_params(hnsw_ef: int | None) -> qe.SearchParams | None:
    """Engine search parameters for a given ef (None: the engine's defaults)."""
    if hnsw_ef is None:
        return None
    if isinstance(hnsw_ef, bool) or not isinstance(hnsw_ef, int) or hnsw_ef < 1:
        raise ValueError(f"hnsw_ef must be a whole number >= 1, got {hnsw_ef!r}")
    return qe.SearchParams(hnsw_ef=hnsw_ef)


def optimizer_config(index_min_points: int, dim: int) -> qe.EdgeOptimizersConfig | None:
    """The engine's indexing threshold (KB of vectors per name) matching `index_min_points`.

    optimize() then indexes a segment only once it holds that many points: a small ingest after
    a big one stays in the exact appendable segment instead of re-building the whole graph.
    """
    check_index_min_points(index_min_points)
    if index_min_points == 0:
        return None  # the engine's default: 10,000 KB, i.e. 10,000 points of 256 floats
    return qe.EdgeOptimizersConfig(indexing_threshold=max(1, math.ceil(index_min_points * dim * 4 / 1024)))


def build_index_if_large(store: VectorStore, index_min_points: int) -> IndexReport:
    """Run the store's optimize() when it holds at least `index_min_points` points (0 = never)."""
    check_index_min_points(index_min_points)
    points = store.count()
    if index_min_points == 0:
        return IndexReport(False, 0.0, points, _indexed(store), "index building is off (index_min_points 0)")
    if points < index_min_points:
        return IndexReport(False, 0.0, points, _indexed(store),
                           f"{points:,} points < index_min_points {index_min_points:,}: search stays exact")
    started = time.perf_counter()
    built = store.optimize()
    seconds = time.perf_counter() - started
    reason = "index built" if built else "index already up to date"
    return IndexReport(built, seconds, points, _indexed(store), reason)


def _indexed(store: VectorStore) -> int:
    counter = getattr(store, "indexed_points", None)  # the embedded store only; a server indexes by itself
    return int(counter()) if counter is not None else 0
