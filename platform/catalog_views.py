"""The analysts' views, derived from the catalog's base tables (platform/catalog.py).

    attributes          the 16 attributes: label, unit, meaning, plausible range (the registry)
    attributes_long     lesions in long form: one row per lesion and measured attribute
    prediction_errors   per prediction run, image and attribute: measured, predicted, spread, error
    collections         per collection: lesions, patients, ingest health, the latest run, when it was dropped
    collection_versions per collection and model fingerprint: what each model version ingested

The SQL only reads other views, so it works on an empty catalog (typed, no rows) and on any
folder the base views point at. What every column means is in platform/catalog_dictionary.py.
"""

from __future__ import annotations

import duckdb

from dermground.platform.attributes import ATTRIBUTES, ATTRIBUTE_NAMES


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _attributes_sql() -> str:
    rows = ", ".join(f"({_literal(a.name)}, {_literal(a.label)}, {_literal(a.unit)}, {_literal(a.definition)}, "
                     f"{a.low!r}::DOUBLE, {a.high!r}::DOUBLE, {a.decimals})" for a in ATTRIBUTES)
    return (f"SELECT * FROM (VALUES {rows}) "
            "AS t(attribute, label, unit, definition, plausible_low, plausible_high, decimals)")


def _unit_case(column: str) -> str:
    branches = " ".join(f"WHEN {_literal(a.name)} THEN {_literal(a.unit)}" for a in ATTRIBUTES)
    return f"CASE {column} {branches} END"


def _attributes_long_sql() -> str:
    columns = ", ".join(f'"{n}"' for n in ATTRIBUTE_NAMES)
    # UNPIVOT leaves out NULL values: a lesion without a measurement has no row for it.
    return ("SELECT collection, isic_id, patient_id, split, anatom_site_general, attribute, value, "
            f"{_unit_case('attribute')} AS unit, run_id, written_at "
            f"FROM (UNPIVOT lesions ON {columns} INTO NAME attribute VALUE value)")


def _prediction_errors_sql() -> str:
    # The run's own `measured` (what it was scored against), so the view needs no join: 6.4 million
    # rows stay a single scan. Rows written before predictions recorded it have NULL measured; join
    # lesions for those (docs/analysis_example.py shows the join).
    return ("SELECT run_id, collection, isic_id, split, attribute, "
            f"{_unit_case('attribute')} AS unit, measured, value AS predicted, spread, samples, "
            "value - measured AS error, abs(value - measured) AS abs_error, ok, raw, adapter, model_fingerprint, "
            "written_at FROM predictions")


def _collections_sql() -> str:
    # Collection facts come from what the catalog records: ingest runs, the ledger, lesions and
    # quarantine. `collection` is the physical version (`<name>__vN`, the bare name for v0; see
    # platform/store/versions.py); which version is live is the store's alias, not the catalog's.
    return """
WITH names AS (
    SELECT collection FROM ingest_runs UNION SELECT collection FROM lesions
), lesion_facts AS (
    SELECT collection, count(*) AS lesions, count(DISTINCT patient_id) AS patients,
           count(*) FILTER (WHERE split = 'train') AS train_lesions,
           count(*) FILTER (WHERE split = 'test') AS test_lesions,
           max(written_at) AS last_written_at
    FROM lesions GROUP BY collection
), run_facts AS (
    SELECT collection, count(*) AS ingest_runs,
           count(*) FILTER (WHERE status = 'done') AS runs_done,
           count(*) FILTER (WHERE status = 'failed') AS runs_failed,
           count(*) FILTER (WHERE status = 'running') AS runs_running,
           count(*) FILTER (WHERE status = 'died') AS runs_died,
           arg_max(run_id, coalesce(finished_at, started_at, written_at)) AS last_run_id,
           arg_max(status, coalesce(finished_at, started_at, written_at)) AS last_run_status,
           arg_max(fingerprint, coalesce(finished_at, started_at, written_at)) AS last_fingerprint,
           max(finished_at) AS last_finished_at
    FROM ingest_runs GROUP BY collection
), partition_facts AS (
    SELECT collection, count(DISTINCT partition_id) AS partitions FROM ingest_partitions GROUP BY collection
), quarantine_facts AS (
    SELECT collection, count(*) AS quarantined FROM quarantine GROUP BY collection
), fingerprint_facts AS (
    -- as collection_versions counts them: lesions without a run under their collection count too
    SELECT collection, count(DISTINCT fingerprint) AS fingerprints
    FROM (SELECT collection, fingerprint FROM ingest_runs UNION SELECT collection, fingerprint FROM lesions)
    GROUP BY collection
), drop_facts AS (
    -- version numbers are never reused (catalog_copy.versions_in_catalog), so a drop marks its rows for good
    SELECT collection, max(dropped_at) AS dropped_at FROM collection_drops GROUP BY collection
)
SELECT n.collection,
       CASE WHEN regexp_matches(n.collection, '__v[1-9][0-9]*$') THEN regexp_extract(n.collection, '^(.*)__v[0-9]+$', 1) ELSE n.collection END AS name,
       CASE WHEN regexp_matches(n.collection, '__v[1-9][0-9]*$') THEN 'v' || regexp_extract(n.collection, '__v([0-9]+)$', 1) ELSE 'v0' END AS version,
       coalesce(l.lesions, 0) AS lesions, coalesce(l.patients, 0) AS patients,
       coalesce(l.train_lesions, 0) AS train_lesions, coalesce(l.test_lesions, 0) AS test_lesions,
       coalesce(r.ingest_runs, 0) AS ingest_runs, coalesce(r.runs_done, 0) AS runs_done,
       coalesce(r.runs_failed, 0) AS runs_failed, coalesce(r.runs_running, 0) AS runs_running,
       coalesce(r.runs_died, 0) AS runs_died,
       coalesce(p.partitions, 0) AS partitions, coalesce(q.quarantined, 0) AS quarantined,
       coalesce(f.fingerprints, 0) AS fingerprints, r.last_run_id, r.last_run_status, r.last_fingerprint,
       r.last_finished_at, l.last_written_at, d.dropped_at
FROM names n
LEFT JOIN lesion_facts l USING (collection)
LEFT JOIN run_facts r USING (collection)
LEFT JOIN partition_facts p USING (collection)
LEFT JOIN quarantine_facts q USING (collection)
LEFT JOIN fingerprint_facts f USING (collection)
LEFT JOIN drop_facts d USING (collection)
"""


def _collection_versions_sql() -> str:
    return """
WITH runs AS (
    SELECT collection, fingerprint, count(*) AS ingest_runs,
           count(*) FILTER (WHERE status = 'done') AS runs_done,
           min(started_at) AS first_started_at, max(finished_at) AS last_finished_at,
           -- sum() of BIGINT is HUGEINT (float64 in pandas, decimal in Parquet): counts stay BIGINT
           coalesce(sum(n_ingested), 0)::BIGINT AS ingested, coalesce(sum(n_quarantined), 0)::BIGINT AS quarantined
    FROM ingest_runs GROUP BY collection, fingerprint
), current AS (
    SELECT collection, fingerprint, count(*) AS lesions FROM lesions GROUP BY collection, fingerprint
), keys AS (
    -- Lesions without a run under their collection count too: a version restored by a release
    -- that did not copy its ingest runs (before they were keyed by collection) has none.
    SELECT collection, fingerprint FROM runs UNION SELECT collection, fingerprint FROM current
)
SELECT k.collection,
       CASE WHEN regexp_matches(k.collection, '__v[1-9][0-9]*$') THEN regexp_extract(k.collection, '^(.*)__v[0-9]+$', 1) ELSE k.collection END AS name,
       CASE WHEN regexp_matches(k.collection, '__v[1-9][0-9]*$') THEN 'v' || regexp_extract(k.collection, '__v([0-9]+)$', 1) ELSE 'v0' END AS version,
       k.fingerprint, coalesce(r.ingest_runs, 0) AS ingest_runs, coalesce(r.runs_done, 0) AS runs_done,
       r.first_started_at, r.last_finished_at, coalesce(r.ingested, 0)::BIGINT AS ingested,
       coalesce(r.quarantined, 0)::BIGINT AS quarantined, coalesce(c.lesions, 0) AS current_lesions
FROM keys k
LEFT JOIN runs r ON r.collection = k.collection AND r.fingerprint IS NOT DISTINCT FROM k.fingerprint
LEFT JOIN current c ON c.collection = k.collection AND c.fingerprint IS NOT DISTINCT FROM k.fingerprint
"""


ANALYST_VIEWS: dict[str, str] = {
    "attributes": _attributes_sql(),
    "attributes_long": _attributes_long_sql(),
    "prediction_errors": _prediction_errors_sql(),
    "collections": _collections_sql(),
    "collection_versions": _collection_versions_sql(),
}


def create_analyst_views(con: duckdb.DuckDBPyConnection) -> None:
    """Create the derived views on a connection that already has the base table views."""
    for name, sql in ANALYST_VIEWS.items():
        con.execute(f"CREATE VIEW {name} AS {sql}")
