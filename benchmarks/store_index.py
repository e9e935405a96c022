"""EdgeStore with and without its HNSW index: payload-filtered top-10 latency and recall@10.

One run, one collection of N points x 17 named vectors (the real payload schema and its payload
indexes), two filters: selective (split = train AND age_approx = 60, ~1 %) and broad (sex =
female, ~50 %). In order:
  1. exact: top-10 through `EdgeStore.query` before any index (what the store did before, and what
     a collection below `index_min_points` still does), interleaved with the same request sent to
     the bare engine (the wrapper's overhead), the same request without payload (the filter and
     the scoring alone) and a request whose filter matches one point (the engine's fixed cost per
     request): where a selective query's time goes. For the first --noindex-queries queries also
     an extra reference: the same exact search in a collection without payload indexes (what the
     store did before it had them; bare engine, `image` vector only, same points and payloads);
  2. the index built as ingest's finish builds it (`build_index_if_large`), its build time;
  3. indexed: top-10 through the index for each --ef, interleaved with `exact=True` on the same
     shard (the exact reference of this phase), query by query so that load changes hit both.
Recall@10 is against numpy's exact cosine top-10 over the rows the filter matches.

Vectors (--vectors model, the default) follow the demo (tiny) model's embeddings: --real images
of the synthetic data set are embedded (h_im and the 16 h_im_a), a full-covariance Gaussian is
fitted per vector name to all but the last --queries of them, N points are drawn from it, and the
held-out real embeddings are the queries. The Gaussian keeps the embeddings' mean direction and
spectrum (their effective dimension, what makes an index easy or hard) without copying any point;
it has no clusters, which would make neighbours easier to find, so it is the cautious choice. The
tiny model is 128 wide: every vector is lifted to --dim by one fixed random isometry (orthonormal
columns), which keeps every cosine and makes each distance cost what a --dim one costs.
--vectors random draws independent normal vectors instead (an index's worst case).

    .venv/bin/python benchmarks/store_index.py [--n 100000] [--vectors model|random] [--ef 64,128,256]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from harness import load_line, machine_line, percentiles_ms, timed  # first: sets the offline environment

from dermground.platform.attributes import ATTRIBUTES, get_attribute
from dermground.platform.store import (
    DEFAULT_VECTOR_NAMES,
    IMAGE_VECTOR,
    CollectionSpec,
    Range,
    SearchFilter,
    StorePoint,
    build_payload,
    point_id,
)
from dermground.platform.store.edge import EdgeStore, edge_filter
from dermground.platform.store.indexing import (
    DEFAULT_HNSW_EF,
    DEFAULT_INDEX_MIN_POINTS,
    build_index_if_large,
)

FILTERS = {
    "selective": SearchFilter(split="train", ranges={"age_approx": Range(gte=60, lte=60)}),
    "broad": SearchFilter(equals={"sex": "female"}),
}


def real_embeddings(n_images: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """h_im and the 16 h_im_a of `n_images` synthetic lesions, by the tiny model (seed 0), per vector name."""
    import torch

    from dermground.ingest.synth import generate_dataset
    from dermground.platform.embed import Embedder
    from dermground.platform.model.loading import load_backbone
    from dermground.platform.model.tiny import save_tiny_model
    from dermground.platform.records import LesionRecord, read_records

    torch.set_num_threads(1)  # the tiny model's ops are too small to split (docs/BENCHMARKS.md, ingest)
    with tempfile.TemporaryDirectory(prefix="store-index-") as tmp:
        model_dir = save_tiny_model(Path(tmp) / "model", seed=0, preset="tiny", image_size=size)
        generate_dataset(Path(tmp) / "data", patients=max(1, n_images // 20), images=n_images, seed=seed,
                         size=size, progress=False)
        records = [r for r in read_records(Path(tmp) / "data") if isinstance(r, LesionRecord)]
        embedder = Embedder(load_backbone(model_dir, device="cpu", dtype="float32"), batch_size=8)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in DEFAULT_VECTOR_NAMES}
        for start in range(0, len(records), 8):
            out = embedder.embed([r.load_image() for r in records[start:start + 8]])
            parts[IMAGE_VECTOR].append(out.h_im)
            for name, array in out.h_im_a.items():
                parts[get_attribute(name).vector_name].append(array)
    return {name: np.concatenate(arrays).astype(np.float64) for name, arrays in parts.items()}


class VectorSource:
    """Draws the collection's vectors and the queries (see the module docstring)."""

    def __init__(self, kind: str, dim: int, queries: int, real: dict[str, np.ndarray] | None, seed: int) -> None:
        self.kind, self.dim, self.seed = kind, dim, seed
        rng = np.random.default_rng(seed)
        if kind == "random":
            self.queries = rng.normal(size=(queries, dim)).astype(np.float32)
            return
        assert real is not None
        width = real[IMAGE_VECTOR].shape[1]
        if width > dim:
            raise ValueError(f"the model's embeddings are {width} wide, more than --dim {dim}")
        self.lift = np.linalg.qr(rng.normal(size=(dim, width)))[0]  # orthonormal columns: an isometry
        self.mean: dict[str, np.ndarray] = {}
        self.factor: dict[str, np.ndarray] = {}
        for name, rows in real.items():
            fit = rows[:-queries]
            self.mean[name] = fit.mean(axis=0)
            eigval, eigvec = np.linalg.eigh(np.cov(fit, rowvar=False))
            eigval = np.clip(eigval, 0.0, None)
            self.factor[name] = eigvec * np.sqrt(eigval)  # cov = F F^T
            if name == IMAGE_VECTOR:  # participation ratio of the spectrum
                self.effective_dim = float(eigval.sum() ** 2 / (eigval ** 2).sum())
        self.queries = (real[IMAGE_VECTOR][-queries:] @ self.lift.T).astype(np.float32)
        image = real[IMAGE_VECTOR][:-queries]
        unit = image / np.linalg.norm(image, axis=1, keepdims=True)
        pairs = rng.integers(0, len(unit), size=(2000, 2))
        self.mean_pair_cosine = float(np.mean(np.sum(unit[pairs[:, 0]] * unit[pairs[:, 1]], axis=1)))
        self.fit_rows = len(image)

    def draw(self, name: str, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "random":
            return rng.normal(size=(n, self.dim)).astype(np.float32)
        factor = self.factor[name]
        rows = self.mean[name] + rng.normal(size=(n, factor.shape[1])) @ factor.T
        return (rows @ self.lift.T).astype(np.float32)

    def describe(self) -> str:
        if self.kind == "random":
            return "independent normal vectors (an index's worst case); queries normal too"
        return (f"the tiny model's embeddings: Gaussian per vector name fitted to {self.fit_rows} real ones "
                f"(image: effective dimension {self.effective_dim:.1f} of 128, mean cosine between two "
                f"images {self.mean_pair_cosine:.3f}), lifted isometrically to {self.dim}; "
                f"queries = {len(self.queries)} held-out real image embeddings")


class Collection:
    """Payloads (the real schema) and the `image` vectors numpy's exact reference needs."""

    def __init__(self, n: int, source: VectorSource, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n, self.source, self.seed = n, source, seed
        self.split = np.array(["train", "val", "test"])[rng.choice(3, size=n, p=[0.7, 0.15, 0.15])]
        self.age = rng.integers(18, 91, size=n).astype(float)
        self.sex = np.array(["female", "male"])[rng.integers(0, 2, size=n)]
        self.patient = rng.integers(0, 5000, size=n)
        self.attrs = {a.name: rng.uniform(a.low, a.high, size=n) for a in ATTRIBUTES}
        self.ids = [point_id(f"ISIC_{i:07d}") for i in range(n)]
        self.image = np.empty((n, source.dim), dtype=np.float32)
        self.masks = {"selective": (self.split == "train") & (self.age == 60), "broad": self.sex == "female"}

    def batches(self, size: int) -> Iterator[list[StorePoint]]:
        for start in range(0, self.n, size):
            stop = min(start + size, self.n)
            rng = np.random.default_rng([self.seed, start])
            vectors = {name: self.source.draw(name, stop - start, rng) for name in DEFAULT_VECTOR_NAMES}
            self.image[start:stop] = vectors[IMAGE_VECTOR]
            points = []
            for j, i in enumerate(range(start, stop)):
                record = {"isic_id": f"ISIC_{i:07d}", "patient_id": f"IP_{self.patient[i]:05d}",
                          "split": str(self.split[i]), "image_ref": f"hdf5:train-image.hdf5#ISIC_{i:07d}",
                          "age_approx": float(self.age[i]), "sex": str(self.sex[i]),
                          "anatom_site_general": "torso", "tbp_tile_type": "3D: white", "target": 0}
                record |= {name: float(values[i]) for name, values in self.attrs.items()}
                points.append(StorePoint(self.ids[i], {n: v[j] for n, v in vectors.items()},
                                         build_payload(record, "bench")))
            yield points

    def exact_top10(self, q: np.ndarray, filter_name: str) -> set[str]:
        rows = np.flatnonzero(self.masks[filter_name])
        m = self.image[rows]
        scores = (m @ q) / np.maximum(np.linalg.norm(m, axis=1), 1e-30)
        return {self.ids[int(rows[i])] for i in np.argsort(-scores, kind="stable")[:10]}


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    found = percentiles_ms(seconds, (50, 99))
    return found[50], found[99]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="points in the collection")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--vectors", choices=["model", "random"], default="model")
    parser.add_argument("--real", type=int, default=1500, help="images embedded by the tiny model (--vectors model)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", default=str(DEFAULT_HNSW_EF),
                        help=f"comma-separated hnsw_ef values to measure [default: the store's {DEFAULT_HNSW_EF}]")
    parser.add_argument("--index-min-points", type=int, default=DEFAULT_INDEX_MIN_POINTS,
                        help="ingest's threshold, passed to build_index_if_large")
    parser.add_argument("--batch", type=int, default=256, help="points per upsert")
    parser.add_argument("--noindex-queries", type=int, default=20,
                        help="queries for the reference without payload indexes (a full payload scan each)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder [default: a temp dir]")
    args = parser.parse_args()
    efs = [int(v) for v in args.ef.split(",")]

    started = time.perf_counter()
    real = real_embeddings(args.real + args.queries, 112, seed=1) if args.vectors == "model" else None
    source = VectorSource(args.vectors, args.dim, args.queries, real, seed=0)
    print(machine_line())
    print(f"# N={args.n:,}, {len(DEFAULT_VECTOR_NAMES)} named vectors x {args.dim}, cosine, HNSW on image only")
    print(f"# vectors: {source.describe()} (prepared in {time.perf_counter() - started:.1f} s)")
    data = Collection(args.n, source)
    work = Path(tempfile.mkdtemp(prefix="dg-store-index-", dir=args.workdir))
    rows: list[tuple[str, str, float, float, float]] = []
    try:
        import qdrant_edge as qe

        # The reference without payload indexes: only what its exact search reads (image + payload).
        plain = qe.EdgeShard.create(str(work / "no-payload-indexes"), qe.EdgeConfig(vectors={
            IMAGE_VECTOR: qe.EdgeVectorParams(size=args.dim, distance=qe.Distance.Cosine)}))
        with EdgeStore(work / "bench", "bench", index_min_points=args.index_min_points) as store:
            store.ensure_collection(CollectionSpec(dim=args.dim, fingerprint="bench"))

            def upsert_both(points: list[StorePoint]) -> None:
                store.upsert(points)
                plain.update(qe.UpdateOperation.upsert_points([
                    qe.Point(id=p.id, vector={IMAGE_VECTOR: p.vectors[IMAGE_VECTOR]}, payload=p.payload)
                    for p in points]))

            upsert_s, _ = timed(lambda: [upsert_both(points) for points in data.batches(args.batch)])
            assert store.count() == args.n
            print(f"# upsert (EdgeStore + the reference without payload indexes): {args.n / upsert_s:,.0f} points/s "
                  f"({upsert_s:.1f} s); filter matches: "
                  + ", ".join(f"{k} {int(m.sum()):,} ({100 * m.mean():.1f} %)" for k, m in data.masks.items()))

            shard = store._shard  # the bare engine under the wrapper, same requests
            one_point = qe.Filter(must=[qe.FieldCondition(key="isic_id", match=qe.MatchValue(value="ISIC_0000000"))])
            found: dict[tuple[str, str], list[set[str]]] = {}
            lat: dict[tuple[str, str], list[float]] = {}

            def record(key: tuple[str, str], seconds: float, ids: set[str]) -> None:
                lat.setdefault(key, []).append(seconds)
                found.setdefault(key, []).append(ids)

            # 1. exact (no index yet): wrapper and bare engine, query by query
            for fname, flt in FILTERS.items():
                engine_filter = edge_filter(flt)
                for q in source.queries:
                    s, hits = timed(lambda: store.query(IMAGE_VECTOR, q, 10, flt))
                    record((fname, "exact, no index (EdgeStore)"), s, {h.id for h in hits})
                    s, res = timed(lambda: shard.query(qe.QueryRequest(
                        limit=10, query=qe.Query.Nearest(q, using=IMAGE_VECTOR), filter=engine_filter,
                        with_payload=True)))
                    record((fname, "exact, no index (bare engine)"), s, {str(p.id) for p in res})
                    s, res = timed(lambda: shard.query(qe.QueryRequest(
                        limit=10, query=qe.Query.Nearest(q, using=IMAGE_VECTOR), filter=engine_filter)))
                    record((fname, "bare engine, no payload (filter + scoring)"), s, {str(p.id) for p in res})
                    s, _ = timed(lambda: shard.query(qe.QueryRequest(
                        limit=10, query=qe.Query.Nearest(q, using=IMAGE_VECTOR), filter=one_point)))
                    lat.setdefault((fname, "bare engine, 1-point filter (fixed cost)"), []).append(s)
                for q in source.queries[:args.noindex_queries]:
                    s, res = timed(lambda: plain.query(qe.QueryRequest(
                        limit=10, query=qe.Query.Nearest(q, using=IMAGE_VECTOR), filter=engine_filter,
                        with_payload=True)))
                    record((fname, "reference: exact, no payload indexes (bare engine)"), s, {str(p.id) for p in res})
                    s, hits = timed(lambda: store.query(IMAGE_VECTOR, q, 10, flt))
                    record((fname, "exact, no index (EdgeStore), next to the reference"), s, {h.id for h in hits})
            plain.close()
            # 2. the index, as ingest's finish builds it
            report = build_index_if_large(store, args.index_min_points)
            print(f"# index: {report.reason} in {report.seconds:.1f} s over {report.points:,} points "
                  f"({report.indexed_points:,} indexed)")
            # 3. indexed, each ef interleaved with exact=True on the same shard
            exact_params = qe.SearchParams(exact=True)
            for fname, flt in FILTERS.items():
                for ef in efs:
                    for q in source.queries:
                        store.search_params = exact_params
                        s, hits = timed(lambda: store.query(IMAGE_VECTOR, q, 10, flt))
                        record((fname, "exact=True, indexed shard"), s, {h.id for h in hits})
                        store.search_params = qe.SearchParams(hnsw_ef=ef)
                        s, hits = timed(lambda: store.query(IMAGE_VECTOR, q, 10, flt))
                        record((fname, f"HNSW ef={ef}"), s, {h.id for h in hits})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # Recall after all timing: numpy between timed queries would evict the engine's caches.
    truth = {fname: [data.exact_top10(q, fname) for q in source.queries] for fname in FILTERS}
    print("| filter | mode | p50 ms | p99 ms | recall@10 |")
    print("|---|---|---|---|---|")
    results: dict[tuple[str, str], tuple[float, float, float]] = {}
    for (fname, mode), seconds in lat.items():
        per_query = found.get((fname, mode))
        p50, p99 = percentiles(seconds)
        if per_query is None:  # no top-10 to score (the 1-point request)
            results[(fname, mode)] = (p50, p99, float("nan"))
            print(f"| {fname} | {mode} | {p50:.3f} | {p99:.2f} | - |")
            continue
        reps = len(per_query) // len(truth[fname]) if len(per_query) >= len(truth[fname]) else 1
        recall = np.mean([len(ids & truth[fname][i % len(truth[fname])]) / 10 for i, ids in enumerate(per_query)])
        results[(fname, mode)] = (p50, p99, float(recall))
        print(f"| {fname} | {mode}{f' ({reps} rounds)' if reps > 1 else ''} | {p50:.3f} | {p99:.2f} | {recall:.3f} |")
    print("ratios, same run:")
    verdicts = []
    for fname in FILTERS:
        before = results[(fname, "exact, no index (EdgeStore)")]
        bare = results[(fname, "exact, no index (bare engine)")]
        work = results[(fname, "bare engine, no payload (filter + scoring)")][0]
        fixed = results[(fname, "bare engine, 1-point filter (fixed cost)")][0]
        print(f"  {fname}: EdgeStore / bare engine (no index) p50 x{before[0] / bare[0]:.2f}; of the EdgeStore's "
              f"{before[0]:.3f} ms p50, filter + scoring of the matches {max(0.0, work - fixed):.3f} ms (bare engine "
              f"without payload minus its 1-point request), so an index that made that part free would be at most "
              f"x{before[0] / max(1e-9, before[0] - max(0.0, work - fixed)):.2f} faster")
        if (fname, "reference: exact, no payload indexes (bare engine)") in results:
            ref = results[(fname, "reference: exact, no payload indexes (bare engine)")]
            beside = results[(fname, "exact, no index (EdgeStore), next to the reference")]
            print(f"  {fname}: what the payload indexes already buy (not the target's reference): exact without "
                  f"payload indexes / the store's exact search p50 x{ref[0] / beside[0]:.1f} "
                  f"({ref[0]:.2f} vs {beside[0]:.3f} ms, {args.noindex_queries} queries, recall {ref[2]:.3f})")
        for ef in efs:
            hnsw = results[(fname, f"HNSW ef={ef}")]
            exact_now = results[(fname, "exact=True, indexed shard")]
            speedup_p50, speedup_p99 = before[0] / hnsw[0], before[1] / hnsw[1]
            print(f"  {fname} ef={ef}: exact (no index) / indexed p50 x{speedup_p50:.2f}, p99 x{speedup_p99:.2f}; "
                  f"exact=True / indexed p50 x{exact_now[0] / hnsw[0]:.2f}; recall@10 {hnsw[2]:.3f}")
            verdicts.append(f"{fname} ef={ef}: {'PASS' if speedup_p50 >= 3 and hnsw[2] >= 0.99 else 'FAIL'}")
    print(f"at the end (other jobs share the cores): {load_line()}")
    print("targets (indexed p50 >= 3x faster than the store's own exact search, recall@10 >= 0.99): "
          + "; ".join(verdicts))


if __name__ == "__main__":
    main()
