"""The catalog's data dictionary: every view and column with its type, unit and meaning.

Types are read from the views themselves (DuckDB's DESCRIBE over an empty catalog, so they are
the writers' schemas in platform/catalog.py); units and meanings are written here, beside them.
The attributes' units and definitions come from the attribute registry, the metadata columns'
from the metadata-field registry. tests/test_catalog_analyst.py fails when a view or column has no
description, or when docs/CATALOG.md differs from `dermground catalog dictionary`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.metadata_fields import STORED_FIELDS

DOC_PATH = "docs/CATALOG.md"

VIEWS: dict[str, str] = {
    "lesions": "The latest row per (collection, isic_id): one ingested lesion with its measured attributes "
               "and metadata. Written by ingest, one Parquet file per partition.",
    "lesions_history": "Every lesion row ever written (re-ingests included); `lesions` keeps the latest of each.",
    "predictions": "Model answers: one row per evaluation run, image and attribute. Written by `dermground eval "
                   "predict`, one Parquet file per run.",
    "ingest_runs": "The latest status row per ingest run and collection (running, done, failed, died) with its "
                   "counts. A version restored from a snapshot, or seeded from the live one by an ingest into a served "
                   "collection, holds copies of the runs its rows came from under its own collection name.",
    "ingest_runs_history": "Every status row of every ingest run (a run writes `running`, then `done` or `failed`; a later ingest marks a killed one `died`).",
    "ingest_partitions": "The ingest ledger: one row per commit of a partition; a partition counts only once its "
                         "row exists. A partition is committed again when a record it quarantined was fixed since: "
                         "its latest row (committed_at) is the one that counts.",
    "quarantine": "Records that ingest refused, with the field at fault and the reason.",
    "evaluations": "Summary metrics of evaluation runs (R² and parse rate per attribute; retrieval medians and "
                   "quartiles per method and attribute).",
    "retrieval_hits": "Every hit of a retrieval evaluation: per run, method, attribute and test query, the top-k "
                      "train images with their attribute difference to the query and its percentile rank "
                      "(paper §4.2). Written by `dermground eval retrieval`.",
    "collection_drops": "One row per version removed by `dermground collections drop`. The version's catalog rows "
                        "stay (its history); the `collections` view marks it dropped (dropped_at).",
    "attributes": "The 16 quantitative attributes (paper Table 1): label, unit, meaning, plausible range.",
    "attributes_long": "`lesions` in long form: one row per lesion and measured attribute (missing measurements "
                       "have no row).",
    "prediction_errors": "Per prediction run, image and attribute: the measured value the run scored against, "
                         "the prediction, its spread and the error (one scan of predictions, no join). Join "
                         "lesions on (collection, isic_id) for the body site and the other attributes.",
    "collections": "One row per collection: lesions and patients, ingest runs by status, committed partitions, "
                   "quarantined records and the latest run. Built from what the catalog records (ingest runs, "
                   "ledger, lesions, quarantine). A version `dermground collections drop` removed keeps its row, "
                   "marked by dropped_at.",
    "collection_versions": "One row per collection and model fingerprint (a version of the collection's vectors): "
                           "its ingest runs and how many current lesions it wrote.",
}

_RUN_ID = ("", "Identifier of the run that wrote the row.")
_COLLECTION = ("", "Vector-store collection the row belongs to.")
_ISIC_ID = ("", "ISIC image identifier, e.g. ISIC_0015670.")
_SPLIT = ("", "Data split: train, test (or val).")
_WRITTEN_AT = ("UTC", "When the row was written.")

# Meanings shared by columns of the same name in several views; a view's own entry wins.
COMMON: dict[str, tuple[str, str]] = {
    "run_id": _RUN_ID, "collection": _COLLECTION, "isic_id": _ISIC_ID, "split": _SPLIT,
    "written_at": _WRITTEN_AT,
    "patient_id": ("", "Anonymised patient identifier (several lesions can share one)."),
    "fingerprint": ("", "Fingerprint of the model (base weights + adapter) that embedded the row."),
    **{f.name: (f.unit, f.description) for f in STORED_FIELDS},
    **{a.name: (a.unit, f"{a.label}: {a.definition} Measured (TBP), ISIC column {a.isic_column}.")
       for a in ATTRIBUTES},
}

COLUMNS: dict[str, dict[str, tuple[str, str]]] = {
    "lesions": {
        "image_ref": ("", "Where the image is read from (file path or archive member); stays on the server."),
        "run_id": ("", "Ingest run that wrote the row."),
    },
    "predictions": {
        "run_id": ("", "Evaluation run (eval-predict-...)."),
        "model_fingerprint": ("", "Fingerprint of the model that answered."),
        "adapter": ("", "LoRA adapter folder used (empty: the base model)."),
        "attribute": ("", "Attribute asked about (see the attributes view)."),
        "value": ("attribute unit", "Predicted value (pooled over samples and views); NULL when no answer parsed."),
        "raw": ("", "The model's raw answer text (greedy)."),
        "ok": ("", "True when the raw answer parsed as a plausible number."),
        "spread": ("attribute unit", "Standard deviation of the parsed sampled answers (NULL for greedy runs)."),
        "samples": ("count", "Number of parsed sampled answers pooled into value (0 for greedy runs)."),
        "measured": ("attribute unit", "The true value the run scored against (NULL in rows written before "
                                       "predictions recorded it)."),
    },
    "ingest_runs": {
        "run_id": ("", "Ingest run identifier (UTC start time + random suffix)."),
        "source": ("", "Data folder the run read."),
        "split": ("", "Split the run ingested: train, test or all."),
        "status": ("", "running, done, failed, or died (killed; marked by the next ingest)."),
        "started_at": ("UTC", "When the run started."),
        "finished_at": ("UTC", "When the run ended (NULL while running)."),
        "n_ingested": ("count", "Lesions stored by the run."),
        "n_skipped": ("count", "Lesions skipped as already committed by an earlier run."),
        "n_quarantined": ("count", "Records the run quarantined."),
        "options": ("JSON", "The run's options (split, partition size, batch size, actors, device, dtype)."),
    },
    "ingest_partitions": {
        "run_id": ("", "Ingest run that committed the partition."),
        "partition_id": ("", "Partition identifier (p0000, p0001, ...; stable across resumed runs)."),
        "n_points": ("count", "Lesions the partition stored."),
        "ids_hash": ("", "Hash of the partition's stored isic_ids (detects a changed partition on resume)."),
        "committed_at": ("UTC", "When the partition was committed (its ledger row written)."),
    },
    "quarantine": {
        "run_id": ("", "Ingest run that refused the record."),
        "isic_id": ("", "ISIC identifier of the refused record (as given in the metadata)."),
        "field": ("", "The field at fault (e.g. image, areaMM2, isic_id)."),
        "reason": ("", "Why the record was refused."),
        "at": ("UTC", "When the record was quarantined."),
    },
    "evaluations": {
        "run_id": ("", "Evaluation run (eval-predict-... or retrieval-...)."),
        "kind": ("", "attribute_prediction or retrieval."),
        "method": ("", "Model label (prediction) or retrieval method (image_text, hierarchical, image, "
                       "image_untuned, baseline, random)."),
        "attribute": ("", "Attribute the metric is about."),
        "metric": ("", "r2 or parse_rate (prediction); median, q1 or q3 of the hit percentiles (retrieval)."),
        "value": ("metric", "The metric's value (R² unitless; parse rate 0-1; percentiles 0-100)."),
        "n": ("count", "Images (prediction) or hit scores (retrieval) the metric is over."),
        "details": ("JSON", "Run details (model fingerprint, adapter, decoding; or collection, k, b)."),
    },
    "retrieval_hits": {
        "run_id": ("", "Retrieval evaluation run (retrieval-...); its summary rows are in evaluations."),
        "collection": ("", "Collection searched (the tuned one; image_untuned searched the untuned collection)."),
        "method": ("", "Retrieval method: image_text, hierarchical, image, image_untuned, baseline or random."),
        "attribute": ("", "Attribute scored (and, for image_text and hierarchical, the attribute searched for)."),
        "query_isic_id": ("", "The test-split query image."),
        "rank": ("1..k", "Position of the hit in the ranking (1 = best)."),
        "hit_isic_id": ("", "The retrieved train-split image."),
        "query_value": ("attribute unit", "The query's measured value of the attribute."),
        "hit_value": ("attribute unit", "The hit's measured value of the attribute."),
        "difference": ("attribute unit", "hit_value - query_value."),
        "percentile": ("0-100", "Percentile rank of the squared difference among the squared differences to "
                                "all train images: 0 = no train image is closer, 50 = random, lower is better."),
    },
    "collection_drops": {
        "collection": ("", "Physical collection dropped: `<name>__v<N>` for version N, the bare name for version v0."),
        "name": ("", "The collection name clients use."),
        "version": ("", "The version dropped (v0, v1, ...); version numbers are never reused."),
        "dropped_at": ("UTC", "When the drop finished."),
    },
    "attributes": {
        "attribute": ("", "Attribute name (the lesions column and the predictions.attribute value)."),
        "label": ("", "Short human label."),
        "unit": ("", "Unit of the attribute's values (LAB: CIELAB units; 0-10: a score)."),
        "definition": ("", "What the attribute measures (paper Table 1)."),
        "plausible_low": ("attribute unit", "Lowest plausible value: a prediction below it counts as unparsed."),
        "plausible_high": ("attribute unit", "Highest plausible value: a prediction above it counts as unparsed."),
        "decimals": ("digits", "Digits after the point in the model's answer."),
    },
    "attributes_long": {
        "attribute": ("", "Attribute name (see the attributes view)."),
        "value": ("unit column", "The lesion's measured value of the attribute."),
        "unit": ("", "Unit of value."),
        "run_id": ("", "Ingest run that wrote the lesion row."),
    },
    "prediction_errors": {
        "run_id": ("", "Evaluation run (eval-predict-...)."),
        "attribute": ("", "Attribute predicted."),
        "unit": ("", "Unit of measured, predicted, spread and error."),
        "measured": ("unit column", "The true value the run scored against (NULL in rows written before "
                                    "predictions recorded it: join lesions for those)."),
        "predicted": ("unit column", "The model's prediction (NULL when no answer parsed)."),
        "spread": ("unit column", "Standard deviation of the sampled answers (NULL for greedy runs)."),
        "samples": ("count", "Parsed sampled answers pooled into the prediction."),
        "error": ("unit column", "predicted - measured (NULL when either is missing)."),
        "abs_error": ("unit column", "|predicted - measured|."),
        "ok": ("", "True when the answer parsed as a plausible number."),
        "raw": ("", "The model's raw answer text."),
        "adapter": ("", "LoRA adapter folder used (empty: the base model)."),
        "model_fingerprint": ("", "Fingerprint of the model that answered."),
        "written_at": ("UTC", "When the prediction was written."),
    },
    "collections": {
        "collection": ("", "Physical collection: `<name>__v<N>` for version N, the bare name for version v0."),
        "name": ("", "The collection name clients use (the alias; `dermground collections list` shows which version is live)."),
        "version": ("", "The version of that name (v0, v1, ...)."),
        "lesions": ("count", "Current lesions (latest row per isic_id)."),
        "patients": ("count", "Distinct patients among them."),
        "train_lesions": ("count", "Current lesions in the train split."),
        "test_lesions": ("count", "Current lesions in the test split."),
        "ingest_runs": ("count", "Ingest runs into the collection."),
        "runs_done": ("count", "Runs that finished (status done)."),
        "runs_failed": ("count", "Runs that failed."),
        "runs_running": ("count", "Runs still running (a killed run is marked died when the next ingest starts)."),
        "runs_died": ("count", "Runs found dead (killed without a final status row) and marked so by a later ingest."),
        "partitions": ("count", "Distinct partitions committed in the ledger."),
        "quarantined": ("count", "Quarantined records over all runs."),
        "fingerprints": ("count", "Distinct model fingerprints of its runs and current lesions (its rows in collection_versions)."),
        "last_run_id": ("", "The most recent ingest run."),
        "last_run_status": ("", "Its status."),
        "last_fingerprint": ("", "Its model fingerprint."),
        "last_finished_at": ("UTC", "When the last finished run ended."),
        "last_written_at": ("UTC", "When the newest current lesion row was written."),
        "dropped_at": ("UTC", "When `dermground collections drop` removed this version from the store (NULL: "
                              "not dropped; `collections list` shows exactly the versions with NULL here, "
                              "among those with catalog rows)."),
    },
    "collection_versions": {
        "collection": ("", "Physical collection: `<name>__v<N>` for version N, the bare name for version v0."),
        "name": ("", "The collection name clients use (the alias; `dermground collections list` shows which version is live)."),
        "version": ("", "The version of that name (v0, v1, ...)."),
        "fingerprint": ("", "Model fingerprint (base weights + adapter): one version of the collection's vectors."),
        "ingest_runs": ("count", "Ingest runs with this fingerprint (0 for a version restored by a release "
                                  "that did not copy its runs: its lesions still count)."),
        "runs_done": ("count", "Of those, runs that finished."),
        "first_started_at": ("UTC", "When the first of them started."),
        "last_finished_at": ("UTC", "When the last of them finished."),
        "ingested": ("count", "Lesions those runs stored (sum of n_ingested)."),
        "quarantined": ("count", "Records those runs quarantined."),
        "current_lesions": ("count", "Current lesion rows written under this fingerprint."),
    },
}
# The history views have their table's columns.
COLUMNS["lesions_history"] = COLUMNS["lesions"]
COLUMNS["ingest_runs_history"] = COLUMNS["ingest_runs"]


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    unit: str
    meaning: str


@dataclass(frozen=True)
class View:
    name: str
    description: str
    columns: tuple[Column, ...]


def describe_column(view: str, column: str) -> tuple[str, str]:
    """(unit, meaning) of a view's column; ("", "") when it is not described."""
    return COLUMNS.get(view, {}).get(column) or COMMON.get(column) or ("", "")


def dictionary() -> list[View]:
    """Every catalog view with its columns' types (from DuckDB), units and meanings."""
    from dermground.platform.catalog import Catalog

    with tempfile.TemporaryDirectory() as empty:  # an empty catalog: typed views, no data read
        con = Catalog(Path(empty)).connect()
        try:
            names = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                                               "ORDER BY view_name").fetchall()]
            order = {name: i for i, name in enumerate(VIEWS)}  # documented order first, then the rest
            views = []
            for name in sorted(names, key=lambda n: (order.get(n, len(order)), n)):
                described = con.execute(f'DESCRIBE "{name}"').fetchall()
                views.append(View(name, VIEWS.get(name, ""), tuple(
                    Column(col, dtype, *describe_column(name, col)) for col, dtype, *_ in described)))
            return views
        finally:
            con.close()


def undescribed(views: list[View]) -> list[str]:
    """Views and view.columns that have no meaning written down (should be empty)."""
    missing = [v.name for v in views if not v.description]
    return missing + [f"{v.name}.{c.name}" for v in views for c in v.columns if not c.meaning]


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or " "


def render_markdown(views: list[View]) -> str:
    """The dictionary as docs/CATALOG.md."""
    lines = ["# Catalog data dictionary", "",
             "Generated by `dermground catalog dictionary --out docs/CATALOG.md` from the catalog's own schemas",
             "(platform/catalog.py, platform/catalog_views.py) and the descriptions beside them",
             "(platform/catalog_dictionary.py); a test fails when this file is out of date. The same",
             "dictionary prints with `dermground sql --schema`.", "",
             "Query the views with `dermground sql`, POST /sql, or from Python with",
             "`dermground.catalog.connect()` (see docs/analysis_example.py). `dermground sql` prints and",
             "writes (`--format`, `--out`) times as ISO 8601 (`2026-01-01T10:00:00+00:00`) and intervals as",
             "DuckDB writes them (`1 month 2 days 03:00:00`, `-00:00:01`); every text output (table, CSV, JSON,",
             "`--out` .csv and .json, POST /sql) writes a BOOLEAN as `true` / `false` (JSON: its booleans), a",
             "BLOB as DuckDB does (`ab\\x00c`: printable ASCII as is, other bytes as `\\xHH`), a BIT as",
             "`0101` and a TIME as `10:11:12` or `10:11:12.500000` (with its offset: `10:11:12+02:00`).",
             "The table format keeps each row on one line (a line break or tab in a value shows as `\\n`,",
             "`\\t`) and aligns wide (CJK) characters by the columns they take.",
             "Each of these connections has",
             "2 GB of memory and does not spill to disk, and its settings are fixed: DuckDB's advice on an",
             "out-of-memory error (`SET memory_limit`, `temp_directory`, `threads`) cannot be taken there;",
             "aggregate or filter in the query instead.", "",
             "Read the tables through these views, not by globbing a table folder's Parquet files:",
             "`dermground catalog compact` merges them into `_compacted/` and deletes the files it replaced",
             "an hour later, so a `**/*.parquet` glob counts rows twice during that hour and a `*.parquet`",
             "glob misses them after it; each folder's `_manifest.json` says which files are live.",
             "A copy of the folder (`cp -r`, tar, a restored backup) reads the same: superseded files are",
             "recognised by their content when the copy changed their times. To keep a result, use",
             "`dermground sql ... --out FILE` outside the catalog folder (a file in a table folder would be",
             "read as rows of that table).", "",
             "A file in a table folder that no catalog writer wrote (not Parquet, or without the table's",
             "time column: `written_at`, `committed_at` or `at`) is left out of every view, `dermground check`",
             "and compaction, and named in a warning (ForeignCatalogFile) and by `check`: move it out.", "",
             "A `connect()` connection reads the files that were live when it was made: connect again to see",
             "later writes. After a compaction it keeps reading the files it listed until their grace period",
             "(`catalog compact --keep-minutes`, 60 by default) is over; then a query on it fails with",
             "`... is gone: ... Connect again`, and a new connection reads the merged files.", ""]
    lines += [f"- [`{v.name}`](#{v.name}) — {v.description.split('. ')[0].rstrip('.')}." for v in views]
    for view in views:
        lines += ["", f"## {view.name}", "", view.description, "", "| column | type | unit | meaning |",
                  "|---|---|---|---|"]
        lines += [f"| `{c.name}` | {c.type} | {_cell(c.unit)} | {_cell(c.meaning)} |" for c in view.columns]
    return "\n".join(lines) + "\n"


def render_text(views: list[View]) -> str:
    """The dictionary for a terminal (`dermground sql --schema`)."""
    out: list[str] = []
    for view in views:
        out += [f"{view.name}: {view.description}"]
        width = max(len(c.name) for c in view.columns)
        type_width = max(len(c.type) for c in view.columns)
        for c in view.columns:
            unit = f" [{c.unit}]" if c.unit else ""
            out.append(f"  {c.name.ljust(width)}  {c.type.ljust(type_width)}  {c.meaning}{unit}")
        out.append("")
    return "\n".join(out)
