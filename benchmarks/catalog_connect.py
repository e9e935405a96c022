"""How long opening the catalog takes: `dermground.catalog.connect()` (an analyst's notebook) and
the guarded views database `dermground sql` / POST /sql build when the live files change
(`Catalog.connect`, the same views), on benchmarks/catalog.py's synthetic catalog, before and
after `dermground catalog compact`.

Opening costs what binding the views costs: each read_parquet over a table's files reads every
file's footer when its view is created.

    .venv/bin/python benchmarks/catalog_connect.py [--lesions 100000] [--repeats 7] [--dir /tmp/catalog-bench]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from catalog import build, files_per_table
from harness import load_line, machine_line, percentiles_ms

from dermground.platform.analyst import connect
from dermground.platform.catalog import Catalog


def time_connects(catalog_dir: Path, repeats: int) -> dict[str, float]:
    """p50 wall ms of connect() and of Catalog.connect(), each connection closed at once."""
    samples: dict[str, list[float]] = {"connect()": [], "Catalog.connect()": []}
    for _ in range(repeats):
        for label, open_ in (("connect()", connect), ("Catalog.connect()", Catalog(catalog_dir).connect)):
            started = time.perf_counter()
            con = open_(catalog_dir) if label == "connect()" else open_()
            samples[label].append(time.perf_counter() - started)
            con.close()
    return {label: percentiles_ms(s, (50,))[50] for label, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lesions", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/dermground-catalog-bench"))
    parser.add_argument("--rebuild", action="store_true", help="write the catalog again even if it exists")
    args = parser.parse_args()
    catalog_dir = args.dir / f"catalog-{args.lesions}"
    print(machine_line())
    if args.rebuild and catalog_dir.exists():
        shutil.rmtree(catalog_dir)
    if not (catalog_dir / "predictions").is_dir():
        build(catalog_dir, args.lesions)
    # A copy to compact: the catalog stays in the layout ingest wrote for the next run.
    compacted = args.dir / f"catalog-{args.lesions}-compacted"
    if not compacted.is_dir():
        from dermground.platform.catalog_compact import compact

        shutil.copytree(catalog_dir, compacted)
        compact(compacted)
    for title, folder in (("as ingest wrote it", catalog_dir), ("after `catalog compact`", compacted)):
        result = time_connects(folder, args.repeats)
        print(f"{title}: files per table {files_per_table(folder)}")
        print("  " + "   ".join(f"{label} p50 {ms:.0f} ms" for label, ms in result.items()))
    print(f"during the run: {load_line()}")


if __name__ == "__main__":
    main()
