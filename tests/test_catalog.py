"""The catalog: Parquet appends, DuckDB views, the read-only analyst SQL guard and `dermground sql`."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dermground.platform.catalog import TABLES, Catalog, CatalogError, SqlRejected, run_readonly_sql
from dermground.platform.cli import cli

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _lesion(isic_id: str, split: str, at: datetime, collection: str = "c1", **extra: object) -> dict:
    return {"isic_id": isic_id, "patient_id": "IP_1", "split": split, "image_ref": f"file:{isic_id}.jpg",
            "areaMM2": 12.5, "collection": collection, "fingerprint": "fp", "run_id": "r1",
            "written_at": at, **extra}


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = Catalog(tmp_path / "catalog")
    cat.append("lesions", [_lesion("ISIC_1", "train", T0), _lesion("ISIC_2", "train", T0)])
    cat.append("lesions", [_lesion("ISIC_1", "test", T0 + timedelta(seconds=1))])
    cat.append("lesions", [_lesion("ISIC_1", "val", T0, collection="c2")])
    return cat


def test_views_exist_and_are_typed_before_any_write(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "empty")
    for table, schema in TABLES.items():
        assert cat.query(f"SELECT count(*) AS n FROM {table}") == [{"n": 0}]
        columns = cat.query(f"SELECT column_name FROM (DESCRIBE {table})")
        assert [c["column_name"] for c in columns] == schema.names
    described = {r["column_name"]: r["column_type"] for r in cat.query("SELECT * FROM (DESCRIBE lesions)")}
    assert described["areaMM2"] == "DOUBLE" and described["target"] == "BIGINT"


def test_latest_row_per_collection_and_isic_id_wins(catalog: Catalog) -> None:
    rows = catalog.query("SELECT collection, isic_id, split FROM lesions ORDER BY collection, isic_id")
    assert rows == [{"collection": "c1", "isic_id": "ISIC_1", "split": "test"},
                    {"collection": "c1", "isic_id": "ISIC_2", "split": "train"},
                    {"collection": "c2", "isic_id": "ISIC_1", "split": "val"}]
    assert catalog.query("SELECT count(*) AS n FROM lesions_history") == [{"n": 4}]
    assert catalog.query("SELECT areaMM2 FROM lesions WHERE isic_id = ? AND collection = ?",
                         ["ISIC_2", "c1"]) == [{"areaMM2": 12.5}]


def test_ingest_runs_latest_status_wins(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    cat.append("ingest_runs", [{"run_id": "r1", "collection": "c1", "status": "running", "written_at": T0}])
    cat.append("ingest_runs", [{"run_id": "r1", "collection": "c1", "status": "done", "n_ingested": 5,
                                "written_at": T0 + timedelta(minutes=1)}])
    assert cat.query("SELECT status, n_ingested FROM ingest_runs") == [{"status": "done", "n_ingested": 5}]


def test_every_table_accepts_rows_and_stamps_time(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    cat.append("predictions", [{"run_id": "r", "isic_id": "ISIC_1", "attribute": "areaMM2", "value": None,
                                "raw": "abc", "ok": False}])
    cat.append("ingest_partitions", [{"run_id": "r", "collection": "c1", "partition_id": "p0000",
                                      "n_points": 3, "ids_hash": "h"}])
    cat.append("quarantine", [{"collection": "c1", "run_id": "r", "isic_id": "ISIC_9", "field": "image",
                               "reason": "truncated JPEG"}])
    cat.append("evaluations", [{"run_id": "e", "kind": "r2", "attribute": "areaMM2", "metric": "r2", "value": 0.8}])
    assert cat.query("SELECT ok, raw FROM predictions") == [{"ok": False, "raw": "abc"}]
    assert cat.query("SELECT reason FROM quarantine WHERE field = 'image'") == [{"reason": "truncated JPEG"}]
    (row,) = cat.query("SELECT committed_at FROM ingest_partitions")
    assert row["committed_at"] is not None
    assert cat.query("SELECT value FROM evaluations") == [{"value": 0.8}]


def test_append_is_atomic_and_a_named_file_is_replaced_not_duplicated(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    row = {"run_id": "r", "collection": "c1", "partition_id": "p0001", "n_points": 7, "ids_hash": "x"}
    first = cat.append("ingest_partitions", [row], name="c1-p0001")
    second = cat.append("ingest_partitions", [row], name="c1-p0001")
    assert first == second == tmp_path / "ingest_partitions" / "c1-p0001.parquet"
    assert cat.query("SELECT count(*) AS n FROM ingest_partitions") == [{"n": 1}]
    assert sorted(p.name for p in (tmp_path / "ingest_partitions").iterdir()) == ["c1-p0001.parquet"]


def test_bad_rows_are_refused_naming_table_and_column(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    with pytest.raises(CatalogError, match=r"lesions row 0: unknown column\(s\) \['colour'\]"):
        cat.append("lesions", [{"isic_id": "ISIC_1", "colour": "red"}])
    with pytest.raises(CatalogError, match="unknown catalog table 'nope'"):
        cat.append("nope", [{}])
    with pytest.raises(CatalogError, match="lesions"):
        cat.append("lesions", [{"isic_id": "ISIC_1", "areaMM2": "big"}])
    assert not (tmp_path / "lesions").exists() or not list((tmp_path / "lesions").iterdir())


# --- the analyst guard ----------------------------------------------------------------------
def test_readonly_select_with_row_cap(catalog: Catalog) -> None:
    result = run_readonly_sql(catalog.dir, "SELECT isic_id FROM lesions_history ORDER BY isic_id", max_rows=3)
    assert result.columns == ["isic_id"]
    assert result.rows == [("ISIC_1",), ("ISIC_1",), ("ISIC_1",)] and result.truncated
    full = run_readonly_sql(catalog.dir, "WITH x AS (SELECT * FROM lesions) SELECT count(*) FROM x")
    assert full.rows == [(3,)] and not full.truncated
    own = run_readonly_sql(catalog.dir, f"SELECT count(*) FROM read_parquet('{catalog.dir}/lesions/*.parquet')")
    assert own.rows == [(4,)]


@pytest.mark.parametrize("sql, reason", [
    ("INSERT INTO lesions_history SELECT * FROM lesions", "INSERT statement"),
    ("DELETE FROM lesions", "DELETE statement"),
    ("CREATE TABLE t AS SELECT 1", "CREATE statement"),
    ("ATTACH 'other.duckdb' AS o", "ATTACH statement"),
    ("INSTALL httpfs", "only SELECT"),
    ("PRAGMA database_list", "PRAGMA statement"),
    ("SET enable_external_access = true", "SET statement"),
    ("SELECT 1; SELECT 2", "exactly one statement"),
    ("SELECT 1; DROP VIEW lesions", "exactly one statement"),
    ("SELEC nonsense", "cannot parse"),
    ("SELECT * FROM read_csv('/etc/passwd')", "outside the catalog folder"),
])
def test_readonly_refuses(catalog: Catalog, sql: str, reason: str) -> None:
    with pytest.raises(SqlRejected, match=reason):
        run_readonly_sql(catalog.dir, sql)
    assert run_readonly_sql(catalog.dir, "SELECT count(*) FROM lesions").rows == [(3,)]  # nothing changed


def test_copy_to_inside_the_catalog_folder_is_refused(catalog: Catalog) -> None:
    target = catalog.dir / "lesions" / "injected.parquet"
    with pytest.raises(SqlRejected, match="COPY statement"):
        run_readonly_sql(catalog.dir, f"COPY (SELECT * FROM lesions) TO '{target}' (FORMAT parquet)")
    assert not target.exists()


def test_files_outside_the_catalog_cannot_be_read(catalog: Catalog, tmp_path: Path) -> None:
    outside = tmp_path / "secret.parquet"
    pq.write_table(pa.table({"secret": [42]}), outside)
    for sql in (f"SELECT * FROM read_parquet('{outside}')",
                f"SELECT * FROM read_parquet('{catalog.dir}/../secret.parquet')",
                "SELECT * FROM glob('/*')"):
        with pytest.raises(SqlRejected, match="outside the catalog folder"):
            run_readonly_sql(catalog.dir, sql)


def test_long_query_is_interrupted(catalog: Catalog) -> None:
    with pytest.raises(SqlRejected, match="longer than 0.2 s"):
        run_readonly_sql(catalog.dir, "SELECT sum(hash(i)) FROM range(10000000000000) t(i)", timeout_s=0.2)


# --- CLI --------------------------------------------------------------------------------------
def _sql(home: Path, *args: str):
    return CliRunner().invoke(cli, ["--home", str(home), "sql", *args])


@pytest.fixture
def home(tmp_path: Path, catalog: Catalog) -> Path:
    return catalog.dir.parent  # Settings.catalog_dir = HOME/catalog


def test_cli_formats(home: Path) -> None:
    query = "SELECT collection, isic_id, split FROM lesions ORDER BY collection, isic_id"
    table = _sql(home, query)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split() == ["collection", "isic_id", "split"] and lines[2].split() == ["c1", "ISIC_1", "test"]
    as_csv = _sql(home, query, "--format", "csv")
    assert list(csv.reader(io.StringIO(as_csv.output)))[1] == ["c1", "ISIC_1", "test"]
    as_json = _sql(home, query, "--format", "json")
    assert json.loads(as_json.output)[2] == {"collection": "c2", "isic_id": "ISIC_1", "split": "val"}
    stamped = json.loads(_sql(home, "SELECT max(written_at) AS t FROM lesions", "--format", "json").output)
    assert stamped[0]["t"].startswith("2026-01-01T00:00:01")


def test_cli_row_cap_and_refusal(home: Path) -> None:
    capped = _sql(home, "SELECT * FROM lesions_history", "--max-rows", "2", "--format", "csv")
    assert capped.exit_code == 0 and len(list(csv.reader(io.StringIO(capped.stdout)))) == 3
    assert "stopped at 2 rows" in capped.stderr
    refused = _sql(home, "DROP VIEW lesions")
    assert refused.exit_code == 1
    assert "only SELECT queries are allowed, this is a DROP statement" in refused.output
    assert "Traceback" not in refused.output


def test_a_query_out_of_memory_is_told_what_it_can_change(tmp_path: Path) -> None:
    """DuckDB's out-of-memory error advised SET temp_directory, memory_limit or threads, none of
    which a locked analyst connection can do (here a connection with a small limit stands in for
    the 2 GB one, so the test needs little memory)."""
    import duckdb

    from dermground.platform.catalog import SqlFailed, guarded_select

    con = duckdb.connect(":memory:", config={"memory_limit": "32MB", "threads": "1"})
    sql = "SELECT list(range) FROM range(20000000)"
    with pytest.raises(SqlFailed, match=r"needed more memory than an analyst's query has \(2GB.*GROUP BY, WHERE") as err:
        with guarded_select(con, sql, tmp_path, timeout_s=60):
            con.execute(sql).fetchall()
    assert "temp_directory" not in str(err.value)
