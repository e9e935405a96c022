"""`dermground catalog compact`: same views after, readers unaffected, writers never blocked or lost."""

from __future__ import annotations

import fcntl
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dermground.platform.analyst import connect
from dermground.platform.catalog import Catalog
from dermground.platform.catalog_compact import LOCK_FILE, CompactionBusy, compact
from dermground.platform.catalog_files import COMPACTED_DIR, Manifest, live_files, live_parts
from dermground.platform.cli import cli

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SNAPSHOT = {
    "lesions": "SELECT collection, isic_id, split, areaMM2 FROM lesions ORDER BY ALL",
    "lesions_history": "SELECT isic_id, split, written_at FROM lesions_history ORDER BY ALL",
    "ledger": "SELECT partition_id, n_points FROM ingest_partitions ORDER BY ALL",
    "predictions": "SELECT isic_id, attribute, measured, predicted FROM prediction_errors ORDER BY ALL",
    "collections": "SELECT collection, lesions, partitions FROM collections ORDER BY ALL",
}


def _ingest_like(cat: Catalog, partitions: int, start: int = 0) -> None:
    for p in range(start, start + partitions):
        rows = [{"isic_id": f"ISIC_{p:03d}{j}", "split": "train", "collection": "c1", "areaMM2": float(p + j),
                 "written_at": T0 + timedelta(seconds=p)} for j in range(3)]
        cat.append("lesions", rows, name=f"c1--p{p:04d}")
        cat.append("ingest_partitions", [{"run_id": "r1", "collection": "c1", "partition_id": f"p{p:04d}",
                                          "n_points": 3, "ids_hash": "h"}], name=f"c1--p{p:04d}")


def _snapshot(catalog_dir: Path) -> dict[str, list[dict]]:
    cat = Catalog(catalog_dir)
    return {name: cat.query(sql) for name, sql in SNAPSHOT.items()}


@pytest.fixture
def cat(tmp_path: Path) -> Catalog:
    cat = Catalog(tmp_path / "catalog")
    _ingest_like(cat, 6)
    cat.append("lesions", [{"isic_id": "ISIC_0000", "split": "test", "collection": "c1", "areaMM2": 1.5,
                            "written_at": T0 + timedelta(days=1)}])  # a re-ingested lesion: the newer row wins
    # A predictions file from before `measured` existed (no such column), and a current one.
    old = pa.table({"run_id": ["e0"], "collection": ["c1"], "isic_id": ["ISIC_0000"], "attribute": ["areaMM2"],
                    "value": [2.0], "written_at": pa.array([T0], type=pa.timestamp("us", tz="UTC"))})
    (cat.dir / "predictions").mkdir()
    pq.write_table(old, cat.dir / "predictions" / "old.parquet")
    cat.append("predictions", [{"run_id": "e1", "collection": "c1", "isic_id": "ISIC_0001", "attribute": "areaMM2",
                                "value": 3.0, "measured": 1.0}])
    return cat


def test_compaction_keeps_every_view_and_leaves_one_file_per_table(cat: Catalog) -> None:
    before = _snapshot(cat.dir)
    assert len(live_files(cat.dir / "lesions")) == 7
    summary = compact(cat.dir)
    assert {t.table: t.files_merged for t in summary.tables if t.files_merged} == \
        {"lesions": 7, "ingest_partitions": 6, "predictions": 2}
    assert _snapshot(cat.dir) == before
    for table in ("ingest_partitions", "predictions"):
        (only,) = live_files(cat.dir / table)
        assert only.parent.name == COMPACTED_DIR
    # lesions: the latest row per key in the current file, the re-ingested lesion's old row beside it
    parts = live_parts(cat.dir / "lesions")
    assert parts.current is not None and parts.recent == [] and len(parts.older) == 1
    assert pq.read_metadata(parts.current).num_rows == 18 and pq.read_metadata(parts.older[0]).num_rows == 1
    assert compact(cat.dir).tables[0].files_merged == 0  # nothing left to merge
    assert before["predictions"][0]["measured"] is None  # the old file's missing column reads as NULL


def test_readers_see_no_half_state_and_superseded_files_go_after_the_grace(cat: Catalog) -> None:
    early = connect(cat.dir)  # lists the small files before the swap
    expected = early.execute("SELECT count(*) FROM lesions_history").fetchone()
    compact(cat.dir, keep_s=3600)
    assert early.execute("SELECT count(*) FROM lesions_history").fetchone() == expected  # still readable
    late = connect(cat.dir)
    assert late.execute("SELECT count(*) FROM lesions_history").fetchone() == expected  # merged, not doubled
    small = sorted((cat.dir / "lesions").glob("*.parquet"))
    assert len(small) == 7, "superseded files stay for the grace period"
    assert compact(cat.dir, keep_s=3600).tables[0].files_deleted == 0
    deleted = {t.table: t.files_deleted for t in compact(cat.dir, keep_s=0).tables}
    assert deleted["lesions"] == 7 and not list((cat.dir / "lesions").glob("*.parquet"))
    assert Manifest.read(cat.dir / "lesions").superseded == {}
    assert late.execute("SELECT count(*) FROM lesions_history").fetchone() == expected
    assert connect(cat.dir).execute("SELECT count(*) FROM lesions_history").fetchone() == expected


def test_writes_after_a_compaction_stay_live_even_under_a_superseded_name(cat: Catalog) -> None:
    compact(cat.dir)
    _ingest_like(cat, 2, start=6)  # new partitions
    # An idempotent retry rewrites a partition file that the compaction superseded: the new file counts.
    cat.append("ingest_partitions", [{"run_id": "r2", "collection": "c1", "partition_id": "p0000", "n_points": 4,
                                      "ids_hash": "h2"}], name="c1--p0000")
    rows = cat.query("SELECT partition_id, max(n_points) AS n, count(*) AS copies FROM ingest_partitions "
                     "GROUP BY 1 ORDER BY 1")
    assert [r["partition_id"] for r in rows] == [f"p{p:04d}" for p in range(8)]
    assert rows[0] == {"partition_id": "p0000", "n": 4, "copies": 2}
    assert cat.query("SELECT count(*) AS n FROM lesions") == [{"n": 24}]
    compact(cat.dir)
    assert cat.query("SELECT count(*) AS n FROM ingest_partitions") == [{"n": 9}]
    assert len(live_files(cat.dir / "ingest_partitions")) == 1


def test_a_merged_file_not_in_the_manifest_is_invisible(cat: Catalog) -> None:
    # What a reader sees between the merged file's rename and the manifest swap.
    stray = cat.dir / "lesions" / COMPACTED_DIR
    stray.mkdir()
    pq.write_table(pq.read_table(next((cat.dir / "lesions").glob("*.parquet"))), stray / "pending.parquet")
    assert cat.query("SELECT count(*) AS n FROM lesions_history") == [{"n": 19}]


def test_one_compaction_at_a_time_and_the_cli(cat: Catalog) -> None:
    with open(cat.dir / LOCK_FILE, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CompactionBusy, match="is being compacted by pid"):
            compact(cat.dir)
    result = CliRunner().invoke(cli, ["--home", str(cat.dir.parent), "catalog", "compact", "--table", "lesions"])
    assert result.exit_code == 0, result.output
    assert "lesions: 7 files -> 2 (19 rows)" in result.output  # the current file and the older rows and "ingest_partitions" not in result.output
    bad = CliRunner().invoke(cli, ["--home", str(cat.dir.parent), "catalog", "compact", "--table", "nope"])
    assert bad.exit_code == 1 and "unknown catalog table(s) ['nope']" in bad.output


def test_latest_rows_after_a_compaction_follow_the_timestamps_of_later_writes(cat: Catalog) -> None:
    compact(cat.dir)
    cat.append("lesions", [
        {"isic_id": "ISIC_0010", "split": "test", "collection": "c1", "written_at": T0 + timedelta(days=2)},  # newer
        {"isic_id": "ISIC_0020", "split": "test", "collection": "c1", "written_at": T0 - timedelta(days=1)},  # older
        {"isic_id": "ISIC_9990", "split": "val", "collection": "c1", "written_at": T0},  # a new lesion
    ])
    rows = {r["isic_id"]: r["split"] for r in cat.query("SELECT isic_id, split FROM lesions")}
    assert len(rows) == 19 and rows["ISIC_0010"] == "test" and rows["ISIC_0020"] == "train"
    assert rows["ISIC_0000"] == "test" and rows["ISIC_9990"] == "val"
    before = _snapshot(cat.dir)
    assert compact(cat.dir).tables[0].files_merged == 3  # current, older and the new file
    assert _snapshot(cat.dir) == before
    parts = live_parts(cat.dir / "lesions")
    assert pq.read_metadata(parts.current).num_rows == 19 and pq.read_metadata(parts.older[0]).num_rows == 3


def test_compact_if_fragmented_merges_only_tables_past_the_threshold(tmp_path: Path) -> None:
    from dermground.platform.catalog_compact import compact_if_fragmented

    cat = Catalog(tmp_path / "catalog")
    _ingest_like(cat, partitions=5)  # 5 lesions files and 5 ledger files
    cat.append("quarantine", [{"collection": "c1", "run_id": "r1", "isic_id": "ISIC_x", "field": "image",
                               "reason": "r"}], name="c1--p0000")
    before = _snapshot(cat.dir)
    assert compact_if_fragmented(cat.dir, 6) is None  # no table has 6 files yet
    assert compact_if_fragmented(cat.dir, 0) is None  # 0 = never
    summary = compact_if_fragmented(cat.dir, 5)
    assert summary is not None
    assert {t.table for t in summary.tables} == {"lesions", "ingest_partitions"}  # not the 1-file quarantine
    assert live_parts(cat.dir / "lesions").recent == []
    assert len(live_parts(cat.dir / "quarantine").recent) == 1
    assert _snapshot(cat.dir) == before
    with open(cat.dir / LOCK_FILE, "a+") as lock:  # an admin's compaction runs: ingest's finish skips
        fcntl.flock(lock, fcntl.LOCK_EX)
        _ingest_like(cat, partitions=5, start=5)
        assert compact_if_fragmented(cat.dir, 5) is None


def test_a_partitions_rows_stay_findable_by_their_file_in_written_order_after_compactions(cat: Catalog) -> None:
    """rows_by_source gives each writer's file's rows, in the order written, after two compactions
    split them between the current and older files (ISIC_0000 of p0000 was written again later)."""
    from dermground.platform.catalog_files import rows_by_source

    before = rows_by_source(cat.dir / "lesions", ["isic_id"], prefix="c1--")
    compact(cat.dir)
    _ingest_like(cat, 1, start=6)
    compact(cat.dir)
    after = rows_by_source(cat.dir / "lesions", ["isic_id"], prefix="c1--")
    assert not list((cat.dir / "lesions").glob("c1--*.parquet")) or all(
        p.name in Manifest.read(cat.dir / "lesions").superseded for p in (cat.dir / "lesions").glob("*.parquet"))
    assert set(after) == set(before) | {"c1--p0006"}
    for stem, rows in before.items():
        assert after[stem].column("isic_id").to_pylist() == rows.column("isic_id").to_pylist(), stem
    assert after["c1--p0000"].column("isic_id").to_pylist() == ["ISIC_0000", "ISIC_0001", "ISIC_0002"]


def test_a_partition_committed_again_between_compactions_is_found_with_its_last_rows_only(cat: Catalog) -> None:
    """A partition whose quarantined record was fixed is committed again under its file name: its
    rows merged by one compaction and the new file merged by the next were both given to it
    (`dermground check`: 'p0001 (lesions file differs from the ledger)'; a copy carried both)."""
    from dermground.platform.catalog_files import rows_by_source

    compact(cat.dir)
    again = [{"isic_id": f"ISIC_001{j}", "split": "train", "collection": "c1", "areaMM2": 1.0,
              "written_at": T0 + timedelta(days=2)} for j in (0, 1, 2, 3)]  # the fixed record is the 4th
    cat.append("lesions", again, name="c1--p0001")
    assert rows_by_source(cat.dir / "lesions", ["isic_id"], prefix="c1--p0001")["c1--p0001"].num_rows == 4
    compact(cat.dir)
    compact(cat.dir, keep_s=0)  # the written file itself is gone: only the merged rows are left
    assert not (cat.dir / "lesions" / "c1--p0001.parquet").exists()
    rows = rows_by_source(cat.dir / "lesions", ["isic_id"], prefix="c1--")
    assert rows["c1--p0001"].column("isic_id").to_pylist() == ["ISIC_0010", "ISIC_0011", "ISIC_0012", "ISIC_0013"]
    assert rows["c1--p0002"].column("isic_id").to_pylist() == ["ISIC_0020", "ISIC_0021", "ISIC_0022"]


@pytest.mark.parametrize("how", ["cp -r", "tar"])
def test_a_copy_of_a_catalog_made_within_the_grace_period_counts_each_row_once(cat: Catalog, tmp_path: Path,
                                                                               how: str) -> None:
    """Superseded files were recognised by size and mtime only: a copy that does not keep mtimes
    (`cp -r`, tar's whole seconds, a restored backup) read them as live beside the merged file, so
    every count doubled, and its next compaction left them live for good."""
    import shutil
    import tarfile

    before = _snapshot(cat.dir)
    counts = "SELECT (SELECT count(*) FROM lesions_history) AS h, (SELECT count(*) FROM predictions) AS p"
    expected = cat.query(counts)
    compact(cat.dir)  # the small files stay an hour for readers, superseded
    copy = tmp_path / "copy" / "catalog"
    if how == "cp -r":
        shutil.copytree(cat.dir, copy, copy_function=shutil.copyfile)  # contents only: new mtimes
    else:
        with tarfile.open(tmp_path / "backup.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            tar.add(cat.dir, arcname="catalog")
        with tarfile.open(tmp_path / "backup.tar") as tar:
            tar.extractall(copy.parent, filter="data")
    assert Catalog(copy).query(counts) == expected
    assert _snapshot(copy) == before
    compact(copy, keep_s=0)  # past the grace period: the copies of the superseded files go
    assert Catalog(copy).query(counts) == expected
    assert sorted(p.name for p in (copy / "lesions").glob("*.parquet")) == []


def _as_an_earlier_release_compacted(catalog_dir: Path, *, source_written: bool) -> None:
    """Strip what later fixes added: the superseded entries' digests, and (source_written=False)
    the merged rows' _source_written."""
    from dermground.platform.catalog_files import MANIFEST, SOURCE_WRITTEN_COLUMN

    for folder in (p for p in catalog_dir.iterdir() if p.is_dir()):
        if not source_written:
            for path in live_parts(folder).all:
                data = pq.read_table(path)
                if SOURCE_WRITTEN_COLUMN in data.column_names:
                    pq.write_table(data.drop_columns([SOURCE_WRITTEN_COLUMN]), path)
        if (folder / MANIFEST).exists():
            manifest = json.loads((folder / MANIFEST).read_text())
            manifest["superseded"] = {name: entry[:3] for name, entry in manifest["superseded"].items()}
            (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("source_written", [False, True])
def test_a_copy_of_a_catalog_an_earlier_release_compacted_counts_each_row_once(cat: Catalog, tmp_path: Path,
                                                                               source_written: bool) -> None:
    """A compaction by a release before the content digests left superseded entries of size and
    mtime only: a copy (new mtimes) read the superseded files as live beside the merged ones, every
    count doubled, and the copy's next compaction left them live for good. Now such a file is
    recognised by its rows' write stamps; a file written again under its name since stays live;
    the original's next compaction adds the missing digests."""
    import shutil

    from dermground.platform.catalog_files import MANIFEST

    counts = ("SELECT (SELECT count(*) FROM lesions_history) AS h, (SELECT count(*) FROM predictions) AS p, "
              "(SELECT count(*) FROM ingest_partitions) AS g")
    compact(cat.dir)
    _as_an_earlier_release_compacted(cat.dir, source_written=source_written)
    # Written again since under a superseded name (a retried ledger write): new stamps, live.
    cat.append("ingest_partitions", [{"run_id": "r2", "collection": "c1", "partition_id": "p0003", "n_points": 3,
                                      "ids_hash": "h"}], name="c1--p0003")
    before, expected = _snapshot(cat.dir), cat.query(counts)
    assert expected == [{"h": 19, "p": 2, "g": 7}]
    copy = tmp_path / "copy" / "catalog"
    shutil.copytree(cat.dir, copy, copy_function=shutil.copyfile)  # contents only: new mtimes
    assert Catalog(copy).query(counts) == expected
    assert _snapshot(copy) == before
    compact(copy, keep_s=0)  # past the grace period: the copies of the superseded files go
    assert Catalog(copy).query(counts) == expected and _snapshot(copy) == before
    compact(copy, keep_s=0)  # and p0003's retry, merged by the last one
    assert Catalog(copy).query(counts) == expected and not list(copy.glob("*/*.parquet"))
    compact(cat.dir, keep_s=3600)  # the original's next compaction: the digests are back
    entries = json.loads((cat.dir / "lesions" / MANIFEST).read_text())["superseded"]
    assert entries and all(len(entry) == 4 for entry in entries.values())


def test_a_file_someone_dropped_into_a_table_folder_is_left_out_named_and_kept(cat: Catalog) -> None:
    """Someone's own Parquet file in lesions/ counted as rows of NULLs in every view, and `catalog
    compact` merged those into the catalog and then deleted the file; a file that is no Parquet
    failed every query (connect() too) and crashed compact with ArrowInvalid."""
    from dermground.platform.catalog_files import ForeignCatalogFile, foreign_files

    before = _snapshot(cat.dir)
    mine = cat.dir / "lesions" / "my_results.parquet"
    pq.write_table(pa.table({"isic_id": ["ISIC_0000"], "score": [0.5]}), mine)
    junk = cat.dir / "lesions" / "notes.parquet"
    junk.write_bytes(b"not parquet")
    (cat.dir / "lesions" / "spark_out.parquet").mkdir()  # what Spark and pandas' partitioned writes make
    with pytest.warns(ForeignCatalogFile, match="my_results.parquet is not a catalog file .*move it out"):
        assert _snapshot(cat.dir) == before
    assert connect(cat.dir).execute("SELECT count(*) FROM lesions_history").fetchone() == (19,)
    assert [(p.name, why.split(":")[0]) for p, why in foreign_files(cat.dir / "lesions")] == [
        ("my_results.parquet", "no written_at column, so no lesions rows written by dermground"),
        ("notes.parquet", "not a Parquet file"), ("spark_out.parquet", "a folder (a data set another tool wrote?), "
                                                                       "not a Parquet file")]
    compact(cat.dir)
    compact(cat.dir, keep_s=0)
    assert _snapshot(cat.dir) == before
    assert sorted(p.name for p in (cat.dir / "lesions").glob("*.parquet")) == ["my_results.parquet", "notes.parquet",
                                                                              "spark_out.parquet"]


def test_a_connection_older_than_the_grace_period_says_to_connect_again(cat: Catalog) -> None:
    """A connection made before a compaction whose superseded files were since deleted failed with
    DuckDB's bare 'No files found that match the pattern'."""
    import duckdb

    early = connect(cat.dir)
    compact(cat.dir)
    compact(cat.dir, keep_s=0)  # the grace period (shortened) is over: the files it bound are gone
    with pytest.raises(duckdb.Error, match=r"\.parquet is gone: this connection reads the catalog's files "
                                           r"as they were when it was made.*Connect again"):
        early.execute("SELECT count(*) FROM lesions_history").fetchone()
    assert connect(cat.dir).execute("SELECT count(*) FROM lesions_history").fetchone() == (19,)


def test_a_partition_committed_again_between_two_compactions_of_an_earlier_release_is_found_once(
        cat: Catalog) -> None:
    """Both compactions made by a release before _source_written (the merged rows name their file
    and place, not the write): the rows of both writes of p0001 were given to it, and `dermground
    check` said 'p0001 (lesions file differs from the ledger)'. The latest write is now told by its
    rows' write stamp."""
    from dermground.platform.catalog_files import rows_by_source

    compact(cat.dir)
    _as_an_earlier_release_compacted(cat.dir, source_written=False)
    again = [{"isic_id": f"ISIC_001{j}", "split": "train", "collection": "c1", "areaMM2": 1.0,
              "written_at": T0 + timedelta(days=2)} for j in (0, 1, 2, 3)]  # the fixed record is the 4th
    cat.append("lesions", again, name="c1--p0001")
    compact(cat.dir)
    _as_an_earlier_release_compacted(cat.dir, source_written=False)
    compact(cat.dir, keep_s=0)  # the written file itself is gone: only the merged rows are left
    assert not (cat.dir / "lesions" / "c1--p0001.parquet").exists()
    for columns in (["isic_id"], None):  # `check` reads the ids, a collection copy every column
        rows = rows_by_source(cat.dir / "lesions", columns, prefix="c1--")
        assert rows["c1--p0001"].column("isic_id").to_pylist() == ["ISIC_0010", "ISIC_0011", "ISIC_0012",
                                                                   "ISIC_0013"], columns
        assert rows["c1--p0002"].column("isic_id").to_pylist() == ["ISIC_0020", "ISIC_0021", "ISIC_0022"]
    assert rows_by_source(cat.dir / "lesions", ["isic_id"], prefix="c1--")["c1--p0001"].column_names == ["isic_id"]
