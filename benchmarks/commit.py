"""The ingest driver's commit of one partition: EdgeStore.upsert, the collection's creation, the catalog files.

Three parts, each measured in one run with its variants interleaved round by round (p50 of the rounds):
1. EdgeStore.upsert of a partition (--points, default 256) of realistic points (17 named vectors,
   the payload from build_payload), at d=128 and d=256: the store's checks, building the engine's
   points, and the engine's update. `before` is the previous code path (per-vector checks, numpy
   vectors handed to the engine); `after` is EdgeStore.upsert as it is now (one stacked check,
   vectors handed over as memoryviews). Also: the engine's update in one call vs 4 calls of a quarter, and
   into a shard without the payload indexes (their share of the update).
2. EdgeStore.ensure_collection of a new 17-vector collection: creating the shard vs its payload indexes.
3. Catalog.append of a partition's catalog files (lesions rows, one ledger row).

    .venv/bin/python benchmarks/commit.py [--points 256] [--rounds 9]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from harness import load_line, machine_line, timed  # first: sets the offline environment

from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.catalog import TABLES, Catalog
from dermground.platform.store import (
    DEFAULT_VECTOR_NAMES,
    CollectionSpec,
    StorePoint,
    VectorStore,
    build_payload,
    point_id,
)
from dermground.platform.store.edge import _INDEX_TYPES, _NO_HNSW, EdgeStore, qe
from dermground.platform.store.indexing import optimizer_config
from dermground.platform.store.schema import PAYLOAD_INDEXES

FINGERPRINT = "bench-commit"
SITES = ("head/neck", "upper extremity", "lower extremity", "anterior torso", "posterior torso")


def make_points(first: int, n: int, dim: int, rng: np.random.Generator) -> list[StorePoint]:
    """n points as the partition writer builds them: rows of one [17, d] float32 array per record."""
    points = []
    for i in range(first, first + n):
        record: dict[str, object] = {
            "isic_id": f"ISIC_{i:07d}", "patient_id": f"IP_{i % 500:05d}", "split": ("train", "val", "test")[i % 3],
            "image_ref": f"hdf5:train-image.hdf5#ISIC_{i:07d}", "age_approx": None if i % 17 == 0 else 45.0,
            "sex": ("male", "female")[i % 2], "anatom_site_general": SITES[i % len(SITES)],
            "tbp_tile_type": "3D: white", "target": int(i % 11 == 0),
        }
        record |= {a.name: float(rng.uniform(a.low, a.high)) for a in ATTRIBUTES}
        stacked = rng.normal(size=(len(DEFAULT_VECTOR_NAMES), dim)).astype(np.float32)
        points.append(StorePoint(point_id(str(record["isic_id"])),
                                 {name: stacked[k] for k, name in enumerate(DEFAULT_VECTOR_NAMES)},
                                 build_payload(record, FINGERPRINT)))
    return points


def upsert_before(store: EdgeStore, spec: CollectionSpec, points: list[StorePoint]) -> dict[str, float]:
    """The previous EdgeStore.upsert, phase by phase: per-vector checks, numpy vectors to the engine."""
    check, _ = timed(lambda: VectorStore._check_points(store, spec, points))
    build, edge_points = timed(lambda: [qe.Point(id=p.id, vector=dict(p.vectors), payload=p.payload) for p in points])
    update, _ = timed(lambda: store._update(qe.UpdateOperation.upsert_points(edge_points), "upsert"))
    return {"checks": check, "build points": build, "engine update": update}


def upsert_after(store: EdgeStore, spec: CollectionSpec, points: list[StorePoint]) -> dict[str, float]:
    """EdgeStore.upsert as it is, phase by phase (the same statements as the method)."""
    check, vectors = timed(lambda: store._checked_vectors(spec, points))
    build, edge_points = timed(lambda: [qe.Point(id=p.id, vector=named, payload=p.payload)
                                        for p, named in zip(points, vectors, strict=True)])
    update, _ = timed(lambda: store._update(qe.UpdateOperation.upsert_points(edge_points), "upsert"))
    return {"checks": check, "build points": build, "engine update": update}


def upsert_in_chunks(store: EdgeStore, spec: CollectionSpec, points: list[StorePoint], chunks: int) -> float:
    """The engine's update alone, in `chunks` calls (points built beforehand)."""
    edge_points = [qe.Point(id=p.id, vector=named, payload=p.payload)
                   for p, named in zip(points, store._checked_vectors(spec, points), strict=True)]
    step = -(-len(edge_points) // chunks)

    def work() -> None:
        for start in range(0, len(edge_points), step):
            store._update(qe.UpdateOperation.upsert_points(edge_points[start:start + step]), "upsert")
    return timed(work)[0]


def unindexed_shard(path: Path, spec: CollectionSpec) -> qe.EdgeShard:
    """A shard with the collection's vectors and none of its payload indexes."""
    return qe.EdgeShard.create(str(path), qe.EdgeConfig(vectors={
        name: qe.EdgeVectorParams(size=spec.dim, distance=qe.Distance.Cosine,
                                  hnsw_config=None if name in spec.hnsw_on else _NO_HNSW)
        for name in spec.vector_names}, optimizers=optimizer_config(0, spec.dim)))


HANDOVERS: dict[str, Callable[[np.ndarray], object]] = {
    "numpy row": lambda row: row, "row.tolist()": lambda row: row.tolist(), "memoryview(row)": memoryview}


def handover_seconds(points: list[StorePoint], convert: Callable[[np.ndarray], object]) -> float:
    """Seconds to build the engine's points with vectors only (no payload), each vector converted."""
    return timed(lambda: [qe.Point(id=p.id, vector={name: convert(v) for name, v in p.vectors.items()})
                          for p in points])[0]


def p50_ms(values: list[float]) -> float:
    return float(np.median(values)) * 1000.0


def bench_upsert(tmp: Path, dim: int, n: int, rounds: int) -> None:
    spec = CollectionSpec(dim=dim, fingerprint=FINGERPRINT)
    rng = np.random.default_rng(dim)
    with EdgeStore(tmp / f"upsert-{dim}", "bench") as store:
        store.ensure_collection(spec)
        make_points(0, n, dim, rng)  # warm-up: imports, first allocation of the segment
        store.upsert(make_points(0, n, dim, rng))
        phases: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
        totals: dict[str, list[float]] = {"before": [], "after": [], "whole upsert()": []}
        chunked: dict[int, list[float]] = {1: [], 4: []}
        unindexed, bare = [], unindexed_shard(tmp / f"unindexed-{dim}", spec)
        handovers: dict[str, list[float]] = {name: [] for name in HANDOVERS}
        first = n
        variants: dict[str, Callable[[list[StorePoint]], dict[str, float]]] = {
            "before": lambda pts: upsert_before(store, spec, pts), "after": lambda pts: upsert_after(store, spec, pts)}
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:  # fresh ids each time: a partition inserts new points
                result = variants[name](make_points(first, n, dim, rng))
                first += n
                for phase, seconds in result.items():
                    phases[name].setdefault(phase, []).append(seconds)
                totals[name].append(sum(result.values()))
            pts = make_points(first, n, dim, rng)
            first += n
            totals["whole upsert()"].append(timed(lambda pts=pts: store.upsert(pts))[0])
            for chunks in (1, 4):
                chunked[chunks].append(upsert_in_chunks(store, spec, make_points(first, n, dim, rng), chunks))
                first += n
            pts = make_points(first, n, dim, rng)
            first += n
            edge_points = [qe.Point(id=p.id, vector=named, payload=p.payload)
                           for p, named in zip(pts, store._checked_vectors(spec, pts), strict=True)]
            unindexed.append(timed(lambda ep=edge_points: bare.update(qe.UpdateOperation.upsert_points(ep)))[0])
            for name, convert in HANDOVERS.items():
                handovers[name].append(handover_seconds(pts, convert))
        bare.close()
        print(f"\n## EdgeStore.upsert of {n} points x {len(DEFAULT_VECTOR_NAMES)} vectors, d={dim} "
              f"(p50 of {rounds} rounds, ms)")
        print(f"{'phase':16s} {'before':>8s} {'after':>8s} {'after/before':>13s}")
        for phase in phases["before"]:
            b, a = p50_ms(phases["before"][phase]), p50_ms(phases["after"][phase])
            print(f"{phase:16s} {b:8.1f} {a:8.1f} {a / b:12.2f}x")
        b, a = p50_ms(totals["before"]), p50_ms(totals["after"])
        print(f"{'total':16s} {b:8.1f} {a:8.1f} {a / b:12.2f}x")
        print(f"EdgeStore.upsert() as one call: p50 {p50_ms(totals['whole upsert()']):.1f} ms "
              f"({p50_ms(totals['whole upsert()']) / b:.2f}x the previous path's total)")
        one, four = p50_ms(chunked[1]), p50_ms(chunked[4])
        print(f"engine update in 1 call: {one:.1f} ms, in 4 calls of {-(-n // 4)}: {four:.1f} ms ({four / one:.2f}x); "
              f"into a shard without the {len(PAYLOAD_INDEXES)} payload indexes: {p50_ms(unindexed):.1f} ms "
              f"({p50_ms(unindexed) / one:.2f}x)")
        reference = p50_ms(handovers["numpy row"])
        print("vectors handed to the engine's Point (no payload): " + ", ".join(
            f"{name} {p50_ms(seconds):.1f} ms ({p50_ms(seconds) / reference:.2f}x)"
            for name, seconds in handovers.items()))


def bench_create(tmp: Path, dim: int, rounds: int) -> None:
    spec = CollectionSpec(dim=dim, fingerprint=FINGERPRINT)
    creates, index_totals, per_index, first_five, last_five, wrapper = [], [], [], [], [], []
    for r in range(rounds):
        root = tmp / f"create-{r}"
        root.mkdir()
        config = qe.EdgeConfig(vectors={
            name: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine,
                                      hnsw_config=None if name in spec.hnsw_on else _NO_HNSW)
            for name in spec.vector_names}, optimizers=optimizer_config(0, dim))
        seconds, shard = timed(lambda root=root, config=config: qe.EdgeShard.create(str(root / "shard"), config))
        creates.append(seconds)
        each = [timed(lambda shard=shard, f=field, k=kind: shard.update(
            qe.UpdateOperation.create_field_index(f, _INDEX_TYPES[k])))[0] for field, kind in PAYLOAD_INDEXES.items()]
        shard.close()
        index_totals.append(sum(each))
        per_index.extend(each)
        first_five.append(sum(each[:5]) / 5)
        last_five.append(sum(each[-5:]) / 5)

        def ensure(r: int = r) -> None:
            with EdgeStore(tmp / f"ensure-{r}", "bench") as store:
                store.ensure_collection(spec)
        wrapper.append(timed(ensure)[0])
    print(f"\n## EdgeStore.ensure_collection: {len(spec.vector_names)} vectors, d={dim}, "
          f"{len(PAYLOAD_INDEXES)} payload indexes (p50 of {rounds} rounds, ms)")
    print(f"EdgeShard.create: {p50_ms(creates):.1f}; the {len(PAYLOAD_INDEXES)} create_field_index: "
          f"{p50_ms(index_totals):.1f} (each: p50 {p50_ms(per_index):.1f}, first five {p50_ms(first_five):.1f}, "
          f"last five {p50_ms(last_five):.1f}); EdgeStore.ensure_collection as a whole: {p50_ms(wrapper):.1f}")


def bench_catalog(tmp: Path, n: int, rounds: int) -> None:
    catalog = Catalog(tmp / "catalog")
    columns = tuple(TABLES["lesions"].names)
    payloads = [p.payload for p in make_points(0, n, 8, np.random.default_rng(0))]
    rows = [{**{c: pl[c] for c in columns if c in pl}, "collection": "bench", "run_id": "r1"} for pl in payloads]
    ledger = [{"run_id": "r1", "collection": "bench", "partition_id": "p", "n_points": n, "ids_hash": "h"}]
    had_pandas = "pandas" in sys.modules
    first = timed(lambda: catalog.append("ingest_partitions", ledger, name="bench--first"))[0]
    lesions, ledgers = [], []
    for r in range(rounds):
        lesions.append(timed(lambda r=r: catalog.append("lesions", rows, name=f"bench--{r}"))[0])
        ledgers.append(timed(lambda r=r: catalog.append("ingest_partitions", ledger, name=f"bench--{r}"))[0])
    print(f"\n## Catalog.append per partition (p50 of {rounds} rounds, ms)")
    print(f"lesions ({n} rows): {p50_ms(lesions):.1f}; ingest_partitions (1 row): {p50_ms(ledgers):.1f}; "
          f"the process's first append: {first * 1000:.1f} ("
          + ("pandas was already imported" if had_pandas else "it imports pandas, via pyarrow's Table.from_pylist; "
             "the ingest driver has it imported by ray.data already") + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=256, help="points per partition (the ingest default: 256)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds per measurement; p50 is reported")
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 256], help="vector sizes to measure the upsert at")
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        for dim in args.dims:
            bench_upsert(Path(tmp), dim, args.points, args.rounds)
        bench_create(Path(tmp), args.dims[0], max(3, args.rounds // 3))
        bench_catalog(Path(tmp), args.points, args.rounds)
    print(f"\n# end: {load_line()}")


if __name__ == "__main__":
    main()
