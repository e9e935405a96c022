"""Catalog benchmark: typical analyst queries at the paper's scale (issue #23).

Writes a synthetic catalog the way ingest and eval write it (no model): N lesions in partitions
of 256, each partition one lesions file and one ledger file (ingest/writer.py's names), a few
quarantine files, the ingest run's status rows, and one prediction run of N x 16 rows in one file
(what `eval predict` writes, attribute-major, through Catalog.append_table). Then times each query
R times, both the way `dermground sql` / POST /sql run it (run_readonly_sql: a cursor on the guarded
views database, rebuilt when the live files change) and on one long-lived `connect()` connection
(a notebook), before and after `dermground catalog compact`.

    .venv/bin/python benchmarks/catalog.py [--lesions 400000] [--repeats 7] [--dir /tmp/catalog-bench]

The catalog is reused when --dir already holds one of the same size (--rebuild to write it again).
Target (issue #23): p50 <= 200 ms for each typical query.
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
from harness import load_line, machine_line, percentiles_ms, timed

from dermground.ingest.writer import catalog_file_name
from dermground.platform.analyst import connect
from dermground.platform.attributes import ATTRIBUTES, ATTRIBUTE_NAMES
from dermground.platform.catalog import Catalog, run_readonly_sql
from dermground.platform.catalog_files import live_files

COLLECTION = "bench"
SITES = ("head/neck", "upper extremity", "lower extremity", "anterior torso", "posterior torso")
PARTITION = 256
TARGET_MS = 200.0

QUERIES = {
    "group by site": "SELECT anatom_site_general, count(*) AS n, avg(areaMM2) AS area, avg(age_approx) AS age "
                     "FROM lesions WHERE collection = 'bench' GROUP BY 1 ORDER BY 1",
    "errors per attribute (one run)": "SELECT attribute, count(*) AS n, avg(abs_error) AS mae, "
                                      "corr(measured, predicted) AS r FROM prediction_errors "
                                      "WHERE run_id = 'eval-predict-bench' GROUP BY 1 ORDER BY 1",
    "predictions joined to truth by site": "SELECT l.anatom_site_general, avg(abs(p.value - l.areaMM2)) AS mae "
                                           "FROM predictions p JOIN lesions l USING (collection, isic_id) "
                                           "WHERE p.attribute = 'areaMM2' GROUP BY 1 ORDER BY 1",
    "one image's predictions": "SELECT attribute, measured, predicted, error FROM prediction_errors "
                               "WHERE isic_id = 'ISIC_0123456' ORDER BY attribute",
    "one collection's health": "SELECT * FROM collections WHERE collection = 'bench'",
    "attributes long, one attribute": "SELECT split, avg(value), stddev(value) FROM attributes_long "
                                      "WHERE attribute = 'deltaB' GROUP BY 1",
}


def build(catalog_dir: Path, n: int, seed: int = 0) -> None:
    """Write the synthetic catalog (lesions by partition, ledger, quarantine, runs, one prediction run)."""
    rng = np.random.default_rng(seed)
    catalog = Catalog(catalog_dir)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    run_id = "20260101T000000-bench"
    run = {"run_id": run_id, "collection": COLLECTION, "fingerprint": "fp-bench", "source": "/data/bench",
           "split": "all", "started_at": t0, "options": "{}"}
    catalog.append("ingest_runs", [{**run, "status": "running"}])
    values = {a.name: rng.uniform(a.low, max(a.low + 1e-3, min(a.high, a.low + 100)), size=n) for a in ATTRIBUTES}
    site = rng.integers(0, len(SITES), size=n)
    age = rng.integers(20, 90, size=n).astype(float)
    split = np.where(rng.random(n) < 0.8, "train", "test")
    started = time.perf_counter()
    quarantined = 0
    for p, start in enumerate(range(0, n, PARTITION)):
        stop = min(start + PARTITION, n)
        partition_id = f"p{p:05d}"
        name = catalog_file_name(COLLECTION, partition_id)
        ids = [f"ISIC_{i:07d}" for i in range(start, stop)]
        rows = [{"isic_id": ids[j - start], "patient_id": f"IP_{j // 7:06d}", "split": str(split[j]),
                 "image_ref": f"file:/data/bench/{ids[j - start]}.jpg",
                 **{a: float(values[a][j]) for a in ATTRIBUTE_NAMES}, "age_approx": float(age[j]),
                 "sex": "female" if j % 2 else "male", "anatom_site_general": SITES[site[j]],
                 "tbp_tile_type": "3D: white", "target": int(j % 1000 == 0), "collection": COLLECTION,
                 "fingerprint": "fp-bench", "run_id": run_id, "written_at": t0 + timedelta(seconds=p)}
                for j in range(start, stop)]
        catalog.append("lesions", rows, name=name)
        if p % 50 == 7:  # now and then a partition with a refused record, as real ingests have
            catalog.append("quarantine", [{"collection": COLLECTION, "run_id": run_id, "isic_id": f"ISIC_BAD{p}",
                                           "field": "image", "reason": "truncated JPEG"}], name=name)
            quarantined += 1
        catalog.append("ingest_partitions", [{"run_id": run_id, "collection": COLLECTION,
                                              "partition_id": partition_id, "n_points": len(rows),
                                              "ids_hash": f"h{p}"}], name=name)
        if p % 200 == 0:
            print(f"  ingest-like writes: {stop}/{n} lesions, {time.perf_counter() - started:.0f} s", flush=True)
    catalog.append("ingest_runs", [{**run, "status": "done", "finished_at": t0 + timedelta(hours=1),
                                    "n_ingested": n, "n_skipped": 0, "n_quarantined": quarantined}])
    # One eval-predict run over every lesion: N x 16 rows in one file, in _write_catalog's order
    # (attribute-major).
    k = len(ATTRIBUTE_NAMES)
    truth = np.concatenate([values[a] for a in ATTRIBUTE_NAMES])
    predicted = truth + rng.normal(scale=0.1 * np.abs(truth) + 0.1, size=truth.size)
    ids = pa.array([f"ISIC_{i:07d}" for i in range(n)]).take(pa.array(np.tile(np.arange(n), k)))
    table = pa.table({
        "run_id": pa.array(["eval-predict-bench"] * (n * k)), "collection": pa.array([COLLECTION] * (n * k)),
        "isic_id": ids, "split": pa.array(np.tile(split, k)),
        "model_fingerprint": pa.array(["fp-bench"] * (n * k)), "adapter": pa.array([""] * (n * k)),
        "attribute": pa.array(np.repeat(np.array(ATTRIBUTE_NAMES), n)),
        "value": pa.array(predicted), "raw": pa.array(np.char.mod("%.2f", predicted)),
        "ok": pa.array(np.ones(n * k, dtype=bool)), "spread": pa.array(np.abs(predicted - truth)),
        "samples": pa.array(np.full(n * k, 4)), "measured": pa.array(truth)})
    catalog.append_table("predictions", table)
    print(f"  wrote {n} lesions ({-(-n // PARTITION)} partitions) and {n * k} predictions in "
          f"{time.perf_counter() - started:.0f} s", flush=True)


def files_per_table(catalog_dir: Path) -> dict[str, int]:
    """Live Parquet files per table (what a view opens)."""
    return {d.name: len(live_files(d)) for d in sorted(catalog_dir.iterdir()) if d.is_dir()}


def time_queries(catalog_dir: Path, repeats: int) -> dict[str, dict[str, float]]:
    """p50/p90 wall ms of each query through run_readonly_sql and on one long-lived
    connection, and the process CPU ms of the latter (all DuckDB threads: less sensitive to a
    shared machine than wall time)."""
    results: dict[str, dict[str, float]] = {}
    con = connect(catalog_dir)
    try:
        for label, sql in QUERIES.items():
            fresh, kept, cpu = [], [], []
            run_readonly_sql(catalog_dir, sql, timeout_s=600)  # warm the OS page cache once
            for _ in range(repeats):
                fresh.append(timed(lambda: run_readonly_sql(catalog_dir, sql, timeout_s=600))[0])  # noqa: B023
                c = time.process_time()
                kept.append(timed(lambda: con.execute(sql).fetchall())[0])  # noqa: B023
                cpu.append(time.process_time() - c)
            fresh_ms, kept_ms = percentiles_ms(fresh, (50, 90)), percentiles_ms(kept, (50, 90))
            results[label] = {"fresh_p50": fresh_ms[50], "fresh_p90": fresh_ms[90], "kept_p50": kept_ms[50],
                              "kept_p90": kept_ms[90], "cpu_p50": percentiles_ms(cpu, (50,))[50]}
    finally:
        con.close()
    return results


def report(title: str, results: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'query':40s} {'sql p50':>9s} {'sql p90':>9s} {'conn p50':>9s} {'conn p90':>9s} {'conn cpu':>9s}"
          f"  p50 <= {TARGET_MS:.0f} ms (sql / conn)")
    for label, r in results.items():
        verdict = "/".join("ok" if r[key] <= TARGET_MS else "MISSED" for key in ("fresh_p50", "kept_p50"))
        print(f"{label:40s} {r['fresh_p50']:8.0f}ms {r['fresh_p90']:8.0f}ms {r['kept_p50']:8.0f}ms "
              f"{r['kept_p90']:8.0f}ms {r['cpu_p50']:8.0f}ms  {verdict}")
    print(f"during the run: {load_line()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lesions", type=int, default=400_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/dermground-catalog-bench"))
    parser.add_argument("--rebuild", action="store_true", help="write the catalog again even if it exists")
    parser.add_argument("--no-compact", action="store_true", help="time the ingest-written layout only")
    args = parser.parse_args()
    catalog_dir = args.dir / f"catalog-{args.lesions}"
    print(machine_line())
    print(f"catalog benchmark: {args.lesions} lesions, {args.lesions * 16} predictions")
    if args.rebuild and catalog_dir.exists():
        shutil.rmtree(catalog_dir)
    if not (catalog_dir / "predictions").is_dir():
        build(catalog_dir, args.lesions)
    print(f"files per table: {files_per_table(catalog_dir)}")
    before = time_queries(catalog_dir, args.repeats)
    report("as ingest and eval wrote it (sql = run_readonly_sql per query, conn = one connect())", before)
    if args.no_compact:
        return
    from dermground.platform.catalog_compact import compact

    t = time.perf_counter()
    summary = compact(catalog_dir)
    print(f"\ncompact: {summary} in {time.perf_counter() - t:.1f} s; files per table: {files_per_table(catalog_dir)}")
    after = time_queries(catalog_dir, args.repeats)
    report("after `dermground catalog compact`", after)
    print("\nspeed-up of p50 (sql / conn):")
    for label in QUERIES:
        print(f"  {label:40s} {before[label]['fresh_p50'] / after[label]['fresh_p50']:5.1f}x "
              f"{before[label]['kept_p50'] / after[label]['kept_p50']:5.1f}x")


if __name__ == "__main__":
    main()
