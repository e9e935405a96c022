"""Retrieval evaluation (paper §4.2, Figure 4): every method through the real search service.

For each test-split query and method, the top-k from the train split; each hit scores the
percentile rank of its squared attribute difference to the query among the differences to all
train images (eval/retrieval_metrics.py). Methods:
  image_text (a), hierarchical (b), image (c) on the tuned collection; image_untuned (d) on a
  collection ingested with the base model alone; baseline (e) a non-learned LAB histogram +
  thumbnail embedding (eval/baseline_embedding.py); random, the floor (≈ 50).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from dermground.platform.out_folder import require_writable_folder
from dermground.eval.retrieval_metrics import percentile_ranks
from dermground.eval.retrieval_report import medians_table, plot_boxplots, summarize, write_summary
from dermground.platform.attributes import ATTRIBUTE_NAMES, resolve_attributes
from dermground.platform.search import search
from dermground.platform.search_request import SearchMode, SearchRequest
from dermground.platform.settings import Settings
from dermground.platform.store import SearchFilter, VectorStore, open_store

METHODS = ("image_text", "hierarchical", "image", "image_untuned", "baseline", "random")
RESULT_FILE, FIGURE_FILE, TABLE_FILE = "retrieval.json", "retrieval_boxplots.png", "retrieval_medians.md"
TRAIN_ONLY = SearchFilter(split="train")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Population:
    """The collection's points split into train (searched) and test (queries)."""

    train_ids: list[str]
    train_values: dict[str, np.ndarray]  # attribute -> (n_train,)
    query_ids: list[str]
    query_values: dict[str, np.ndarray]  # attribute -> (n_queries,)
    image_refs: dict[str, str]

    @cached_property
    def train_row(self) -> dict[str, int]:
        """isic_id -> its row in train_ids / train_values (built once, used for every method)."""
        return {isic_id: i for i, isic_id in enumerate(self.train_ids)}


def _population(store: VectorStore, queries: int | None, seed: int) -> _Population:
    train, test, refs = [], [], {}
    for point in store.iter_points(with_payload=True):
        payload = point.payload or {}
        refs[str(payload["isic_id"])] = str(payload.get("image_ref"))
        (train if payload.get("split") == "train" else test if payload.get("split") == "test" else []).append(payload)
    if not train or not test:
        raise ValueError(f"the collection needs train and test points (has {len(train)} train, {len(test)} test); "
                         "ingest it with `--split all`")
    if queries is not None and queries < len(test):
        order = np.random.default_rng(seed).permutation(len(test))[:queries]
        test = [test[i] for i in sorted(order)]

    def values(rows: Sequence[dict]) -> dict[str, np.ndarray]:
        return {a: np.array([float(r[a]) for r in rows]) for a in ATTRIBUTE_NAMES}

    return _Population([str(r["isic_id"]) for r in train], values(train),
                       [str(r["isic_id"]) for r in test], values(test), refs)


def _hit_ids(store: VectorStore, settings: Settings, mode: SearchMode, query_id: str,
             attributes: tuple[str, ...], k: int, b: int) -> list[str]:
    request = SearchRequest(mode=mode, attributes=attributes, isic_id=query_id, k=k, b=b, filter=TRAIN_ONLY)
    return [hit.isic_id for hit in search(request, store=store, embedder=None, settings=settings).hits]


def _values_of(ids: list[list[str]], population: _Population, attribute: str) -> np.ndarray:
    rows = np.array([[population.train_row[i] for i in row] for row in ids])
    return population.train_values[attribute][rows]


def _baseline_vectors(population: _Population, ids: list[str], label: str, progress: bool) -> dict[str, np.ndarray]:
    """The baseline embedding of each id whose image can be read; the others are named in a
    warning with the reason (the refusals ingest quarantines: a stored image may since have gone)."""
    from dermground.platform.progress import progress_bar

    from dermground.platform.image_sources import load_image_bytes
    from dermground.platform.images import INPUT_ERRORS, decode_image, rejection_reason
    from dermground.eval.baseline_embedding import baseline_embedding

    vectors = {}
    for isic_id in progress_bar(ids, desc=f"baseline {label}", disable=not progress, leave=False):
        try:
            vectors[isic_id] = baseline_embedding(decode_image(load_image_bytes(population.image_refs[isic_id])))
        except INPUT_ERRORS as exc:
            _log.warning("eval retrieval: the baseline leaves out %s record %s: field image_ref: %s", label, isic_id,
                         rejection_reason(exc))
    return vectors


def _baseline_hits(population: _Population, train: dict[str, np.ndarray], queries: dict[str, np.ndarray],
                   k: int) -> list[list[str]]:
    """Top-k train ids per query by the baseline embedding (every query in `queries`, candidates `train`)."""
    train_ids = [i for i in population.train_ids if i in train]
    if len(train_ids) < k:
        raise ValueError(f"the baseline can read only {len(train_ids)} train image(s), fewer than k={k}")
    query = np.stack([queries[i] for i in population.query_ids])
    top = np.argsort(-(query @ np.stack([train[i] for i in train_ids]).T), axis=1)[:, :k]
    return [[train_ids[j] for j in row] for row in top]


def _without_queries(population: _Population, dropped: set[str]) -> _Population:
    keep = [q for q, isic_id in enumerate(population.query_ids) if isic_id not in dropped]
    return replace(population, query_ids=[population.query_ids[q] for q in keep],
                   query_values={a: values[keep] for a, values in population.query_values.items()})


def evaluate_retrieval(settings: Settings, collection: str, out_dir: Path, *,
                       untuned_collection: str | None = None, methods: Sequence[str] = METHODS,
                       attributes: Sequence[str] | None = None, queries: int | None = None,
                       b: int = 200, k: int = 5, seed: int = 0, catalog_dir: Path | None = None,
                       progress: bool = True) -> dict[str, dict[str, dict[str, float | int]]]:
    """Run the retrieval evaluation; write retrieval.json, the boxplots and the medians table."""
    from dermground.platform.progress import progress_bar

    require_writable_folder(out_dir)  # before any work: a bad --out must not cost the whole run
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if "image_untuned" in methods and not untuned_collection:
        raise ValueError("method image_untuned needs --untuned-collection (the base model's collection)")
    names = tuple(a.name for a in resolve_attributes(list(attributes) if attributes else None))
    # method -> attribute -> the hit ids per query (methods that ignore the attribute share one list)
    hits: dict[str, dict[str, list[list[str]]]] = {}
    notes: list[str] = []
    with open_store(settings, collection) as store:
        population = _population(store, queries, seed)
        if k > len(population.train_ids):
            # Every method would return the whole train split (median 50 by construction), and random
            # could not draw k: refuse before any search.
            raise ValueError(f"k={k} is more than the {len(population.train_ids)} train images of {collection!r}; "
                             f"use --k {len(population.train_ids)} or less")
        if "baseline" in methods:
            # Read before any search: a query whose image is gone is dropped from every method, so
            # that all methods are compared on the same queries.
            train_vectors = _baseline_vectors(population, population.train_ids, "train", progress)
            query_vectors = _baseline_vectors(population, population.query_ids, "test", progress)
            dropped = set(population.query_ids) - set(query_vectors)
            if len(dropped) == len(population.query_ids):
                raise ValueError("the baseline cannot read the image of any test query (see the warnings above); "
                                 "leave it out with --methods or restore the data folder the collection was ingested from")
            population = _without_queries(population, dropped)
            left_out = len(population.train_ids) - len(train_vectors)
            if left_out or dropped:
                notes.append(f"{left_out} train image(s) left out of the baseline's candidates and {len(dropped)} "
                             "test query(ies) dropped from every method: their image could not be read "
                             "(each named in a warning with its reason).")

        def per_query(mode: SearchMode, label: str, attrs: tuple[str, ...], on: VectorStore) -> list[list[str]]:
            return [_hit_ids(on, settings, mode, q, attrs, k, b)
                    for q in progress_bar(population.query_ids, desc=label, disable=not progress, leave=False)]

        for method, mode in (("image_text", SearchMode.image_text), ("hierarchical", SearchMode.hierarchical)):
            if method in methods:
                hits[method] = {a: per_query(mode, f"{method} {a}", (a,), store) for a in names}
        if "image" in methods:
            hits["image"] = dict.fromkeys(names, per_query(SearchMode.image, "image", (), store))
    if "image_untuned" in methods:
        with open_store(settings, untuned_collection) as untuned:
            hits["image_untuned"] = dict.fromkeys(names, per_query(SearchMode.image, "image untuned", (), untuned))
    if "baseline" in methods:
        hits["baseline"] = dict.fromkeys(names, _baseline_hits(population, train_vectors, query_vectors, k))
    if "random" in methods:
        rng = np.random.default_rng(seed)
        picks = [[population.train_ids[j] for j in rng.choice(len(population.train_ids), k, replace=False)]
                 for _ in population.query_ids]
        hits["random"] = dict.fromkeys(names, picks)
    ranks = {method: {a: percentile_ranks(population.query_values[a], _values_of(ids, population, a),
                                          population.train_values[a]) for a, ids in per_attr.items()}
             for method, per_attr in hits.items()}

    summary = summarize(ranks)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_summary(summary, out_dir / RESULT_FILE)
    plot_boxplots(ranks, out_dir / FIGURE_FILE,
                  title=f"{collection}: {len(population.query_ids)} test queries, top-{k} of "
                        f"{len(population.train_ids)} train images")
    (out_dir / TABLE_FILE).write_text(medians_table(summary) + "".join(f"\n{note}\n" for note in notes))
    if catalog_dir is not None:
        _record(catalog_dir, collection, summary, k=k, b=b,
                hit_rows=_hit_rows(population, hits, ranks, collection, untuned_collection))
    return summary


def _hit_rows(population: _Population, hits: dict[str, dict[str, list[list[str]]]],
              ranks: dict[str, dict[str, np.ndarray]], collection: str,
              untuned_collection: str | None) -> list[dict[str, object]]:
    """The retrieval_hits rows (run_id filled in by _record): one per method, attribute, query and hit."""
    rows: list[dict[str, object]] = []
    for method, per_attr in hits.items():
        searched = untuned_collection if method == "image_untuned" else collection
        for attribute, ids in per_attr.items():
            hit_values = _values_of(ids, population, attribute)
            query_values = population.query_values[attribute]
            for q, query_id in enumerate(population.query_ids):
                for rank, hit_id in enumerate(ids[q], start=1):
                    hit_value, query_value = float(hit_values[q, rank - 1]), float(query_values[q])
                    rows.append({"collection": searched, "method": method, "attribute": attribute,
                                 "query_isic_id": query_id, "rank": rank, "hit_isic_id": hit_id,
                                 "query_value": query_value, "hit_value": hit_value,
                                 "difference": hit_value - query_value,
                                 "percentile": float(ranks[method][attribute][q, rank - 1])})
    return rows


def _record(catalog_dir: Path, collection: str, summary: dict, *, k: int, b: int,
            hit_rows: Sequence[dict[str, object]] = ()) -> str:
    """Write the summary into evaluations and every hit into retrieval_hits; returns the run id."""
    from dermground.platform.catalog import Catalog

    run_id = f"retrieval-{uuid.uuid4().hex[:12]}"
    details = json.dumps({"collection": collection, "k": k, "b": b})
    rows = [{"run_id": run_id, "kind": "retrieval", "method": method, "attribute": attribute,
             "metric": metric, "value": float(stats[metric]), "n": int(stats["n"]), "details": details}
            for method, per_attr in summary.items() for attribute, stats in per_attr.items()
            for metric in ("median", "q1", "q3")]
    catalog = Catalog(catalog_dir)
    # Hits first: a run's summary row is the sign that its hits are complete.
    if hit_rows:
        catalog.append("retrieval_hits", [{**row, "run_id": run_id} for row in hit_rows])
    catalog.append("evaluations", rows)
    return run_id
