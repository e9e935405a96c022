"""An analysis of the catalog from Python: ingest health, prediction errors, retrieval hits.

    python docs/analysis_example.py [--home .dermground] [--out errors_by_site.parquet]

`dermground.catalog.connect()` gives a read-only DuckDB connection with every view (docs/CATALOG.md
lists them with their columns); results come back as pandas with `.df()` or an Arrow table with
`.to_arrow_table()`, exactly as in DuckDB (`.arrow()` is a stream that holds the connection until
read to the end). The same SQL runs in `dermground sql` and POST /sql.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from dermground import catalog

pd.set_option("display.width", 140)
pd.set_option("display.max_columns", 20)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="dermground home [default: DERMGROUND_HOME]")
    parser.add_argument("--out", type=Path, default=None, help="also save the errors by site as Parquet")
    args = parser.parse_args(argv)
    con = catalog.connect(home=args.home)

    print("== ingest health per collection")
    print(con.sql("SELECT collection, lesions, patients, runs_done, runs_failed, quarantined, last_run_status "
                  "FROM collections ORDER BY collection").df().to_string(index=False))

    print("\n== why records were quarantined")
    print(con.sql("SELECT collection, field, reason, count(*) AS n FROM quarantine "
                  "GROUP BY ALL ORDER BY n DESC LIMIT 10").df().to_string(index=False))

    latest = con.execute("SELECT run_id FROM predictions ORDER BY written_at DESC LIMIT 1").fetchone()
    if latest is not None:
        run_id = latest[0]
        print(f"\n== prediction errors of the latest run {run_id}: per attribute")
        # R² as eval scores it: over the parsed answers only (error is NULL for the others).
        per_attribute = con.execute(
            "SELECT attribute, unit, count(*) AS n, avg(ok::INT) AS parsed, avg(abs_error) AS mae, "
            "1 - sum(error * error) / (count(error) * var_pop(measured) FILTER (WHERE error IS NOT NULL)) AS r2 "
            "FROM prediction_errors WHERE run_id = ? GROUP BY ALL ORDER BY r2 DESC NULLS LAST", [run_id]).df()
        print(per_attribute.to_string(index=False))

        # Joined to the lesions: the body site, and the measured value for rows from runs that
        # did not record it yet (coalesce).
        by_site = con.execute(
            "SELECT l.anatom_site_general AS site, e.attribute, count(*) AS n, "
            "avg(abs(e.predicted - coalesce(e.measured, a.value))) AS mae "
            "FROM prediction_errors e "
            "JOIN attributes_long a USING (collection, isic_id, attribute) "
            "JOIN lesions l USING (collection, isic_id) "
            "WHERE e.run_id = ? GROUP BY ALL ORDER BY site, attribute", [run_id]).df()
        print("\n== mean absolute error by body site (first rows)")
        print(by_site.head(12).to_string(index=False))
        if args.out is not None:
            by_site.to_parquet(args.out, index=False)
            print(f"saved {len(by_site)} rows to {args.out}")

    hits_run = con.execute("SELECT run_id FROM retrieval_hits ORDER BY written_at DESC LIMIT 1").fetchone()
    if hits_run is not None:
        print(f"\n== retrieval run {hits_run[0]}: median percentile of the hits (lower is better)")
        medians = con.execute(
            "SELECT attribute, method, median(percentile) AS median FROM retrieval_hits WHERE run_id = ? "
            "GROUP BY ALL", [hits_run[0]]).df()
        print(medians.pivot(index="attribute", columns="method", values="median").round(1).to_string())
        print("\n== the hits furthest from their query (method image, first 5)")
        print(con.execute(
            "SELECT attribute, query_isic_id, rank, hit_isic_id, query_value, hit_value, percentile "
            "FROM retrieval_hits WHERE run_id = ? AND method = 'image' ORDER BY percentile DESC LIMIT 5",
            [hits_run[0]]).df().to_string(index=False))
    con.close()


if __name__ == "__main__":
    main()
