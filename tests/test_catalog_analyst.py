"""The analysts' catalog: connect(), the derived views, the data dictionary, `dermground sql` shell/--out/--schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dermground import catalog as analyst_catalog
from dermground.platform.attributes import ATTRIBUTE_NAMES
from dermground.platform.catalog import TABLES, Catalog
from dermground.platform.catalog_dictionary import DOC_PATH, dictionary, render_markdown, undescribed
from dermground.platform.cli import cli
from dermground.platform.sql_shell import split_statements, statements

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A catalog with two collections, an ingest history, a prediction run and a quarantine row."""
    cat = Catalog(tmp_path / "catalog")
    values = {name: float(i) for i, name in enumerate(ATTRIBUTE_NAMES)}
    cat.append("lesions", [
        {"isic_id": "ISIC_1", "patient_id": "P1", "split": "test", "collection": "c1", "fingerprint": "fpA",
         "anatom_site_general": "head/neck", "run_id": "r1", "written_at": T0, **values},
        {"isic_id": "ISIC_2", "patient_id": "P1", "split": "train", "collection": "c1", "fingerprint": "fpA",
         "anatom_site_general": "posterior torso", "run_id": "r1", "written_at": T0, "areaMM2": 7.0},
    ], name="c1--p0000")
    cat.append("lesions", [{"isic_id": "ISIC_1", "split": "test", "collection": "c2", "fingerprint": "fpB",
                            "run_id": "r2", "written_at": T0, "areaMM2": 99.0}], name="c2--p0000")
    for minute, (run_id, collection, fp, status) in enumerate((("r0", "c1", "fpOld", "failed"),
                                                               ("r1", "c1", "fpA", "done"),
                                                               ("r2", "c2", "fpB", "running"))):
        cat.append("ingest_runs", [{"run_id": run_id, "collection": collection, "fingerprint": fp, "status": status,
                                    "started_at": T0 + timedelta(minutes=minute), "n_ingested": 2,
                                    "finished_at": None if status == "running" else T0 + timedelta(minutes=minute + 1)}])
    cat.append("ingest_partitions", [{"run_id": "r1", "collection": "c1", "partition_id": "p0000", "n_points": 2,
                                      "ids_hash": "h"}])
    cat.append("quarantine", [{"collection": "c1", "run_id": "r1", "isic_id": "ISIC_9", "field": "image",
                               "reason": "truncated JPEG"}])
    # An eval run: ISIC_1 carries the value it was scored against, ISIC_2 (an older row) does not.
    cat.append("predictions", [
        {"run_id": "e1", "collection": "c1", "isic_id": "ISIC_1", "attribute": "areaMM2", "value": 2.5,
         "spread": 0.5, "samples": 4, "ok": True, "measured": 0.0},
        {"run_id": "e1", "collection": "c1", "isic_id": "ISIC_2", "attribute": "areaMM2", "value": 5.0, "ok": True},
        {"run_id": "e1", "collection": "c1", "isic_id": "ISIC_2", "attribute": "A", "value": None, "ok": False},
    ])
    return tmp_path


def test_connect_is_read_only_guarded_and_gives_pandas_and_arrow(home: Path) -> None:
    con = analyst_catalog.connect(home=home)
    frame = con.sql("SELECT collection, count(*) AS n FROM lesions GROUP BY ALL ORDER BY collection").df()
    assert frame.to_dict("records") == [{"collection": "c1", "n": 2}, {"collection": "c2", "n": 1}]
    assert con.sql("SELECT * FROM collections").to_arrow_table().num_rows == 2
    con.execute("CREATE TEMP TABLE mine AS SELECT * FROM lesions")  # one's own scratch results are fine
    for refused in ("DROP VIEW lesions", "CREATE TABLE t AS SELECT 1", "SET enable_external_access=true",
                    "SELECT * FROM read_csv('/etc/passwd')"):
        with pytest.raises(duckdb.Error):
            con.execute(refused)
    assert con.execute("SELECT count(*) FROM lesions").fetchone() == (3,)
    con.close()
    with pytest.raises(FileNotFoundError, match="no catalog"):
        analyst_catalog.connect(home=home / "nowhere")



@pytest.mark.parametrize("module", ["dermground.catalog", "dermground.platform.analyst"])
def test_the_documented_usage_lines_run_and_leave_the_connection_usable(home: Path, module: str) -> None:
    """The `con.sql(...)` lines of the module docstrings, verbatim, one after the other: each gives
    what its comment says, and the connection still takes queries after them (DuckDB's .arrow() is a
    stream that holds the connection until read to the end: the docs showed it as "Arrow")."""
    import importlib

    import pandas as pd
    import pyarrow as pa

    lines = [line.strip() for line in importlib.import_module(module).__doc__.splitlines()]
    used = [line.split("#")[0].strip() for line in lines if line.startswith("con.sql(")]
    assert used
    con = analyst_catalog.connect(home=home)
    for line in used:
        result = eval(line, {"con": con})  # noqa: S307 - the docstring's own example line
        assert isinstance(result, pd.DataFrame | pa.Table), (line, type(result))
        assert con.execute("SELECT count(*) FROM lesions").fetchall() == [(3,)], line
    con.close()



def test_connect_cannot_write_into_the_catalog_folder(home: Path, tmp_path: Path) -> None:
    """COPY ... TO into the catalog is refused, by the folder's own path or the views' file names
    (a live file overwritten in place included); nothing in the folder changes."""
    catalog = (home / "catalog").resolve()
    before = {p: p.read_bytes() for p in catalog.rglob("*") if p.is_file()}
    live = next((catalog / "quarantine").glob("*.parquet"))
    con = analyst_catalog.connect(home=home)
    with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
        con.execute(f"COPY (SELECT 1 AS a) TO '{catalog}/mine.csv'")
    for target, options in ((f"dgcatalog://{catalog}/mine.csv", ""),
                            (f"dgcatalog://{live}", "(FORMAT parquet, USE_TMP_FILE false)"),
                            (f"dgcatalog://{catalog}/lesions/mine", "(FORMAT parquet, PARTITION_BY a)")):
        with pytest.raises(duckdb.Error, match="does not write into the catalog"):
            con.execute(f"COPY (SELECT 1 AS a, 2 AS b) TO '{target}' {options}")
    with pytest.raises(duckdb.PermissionException):  # elsewhere was refused before and still is
        con.execute(f"COPY (SELECT 1 AS a) TO '{tmp_path}/elsewhere.csv'")
    assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (1,)  # reading still works
    con.close()
    assert {p: p.read_bytes() for p in catalog.rglob("*") if p.is_file()} == before


def test_queries_on_a_connection_do_not_keep_catalog_files_open(home: Path) -> None:
    # Each query opens every catalog file through the read-only file system; an uncompacted
    # catalog has thousands, so a handle DuckDB drops must be closed, or a session runs out.
    fds = Path("/proc/self/fd")
    con = analyst_catalog.connect(home=home)
    con.execute("SELECT count(*) FROM lesions").fetchall()
    settled = len(list(fds.iterdir()))
    for _ in range(20):
        assert con.execute("SELECT count(*) FROM lesions").fetchone() == (3,)
        con.execute("SELECT count(*) FROM prediction_errors").fetchall()
    assert len(list(fds.iterdir())) <= settled + 2
    con.close()


def test_the_read_only_catalog_files_keep_one_position_per_thread(tmp_path: Path) -> None:
    """DuckDB's threads seek and then read one shared handle: another thread's seek in between
    must not move this thread's read (it did, and Parquet pages came from the wrong offset)."""
    import threading

    from dermground.platform.catalog_readonly_fs import PositionedReader

    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 4)
    reader = PositionedReader(str(path))
    sought, other_sought = threading.Event(), threading.Event()
    got: dict[str, bytes] = {}

    def first() -> None:
        reader.seek(10)
        sought.set()
        assert other_sought.wait(timeout=60), "the other thread never sought"
        got["first"] = reader.read(4)

    def second() -> None:
        assert sought.wait(timeout=60), "the first thread never sought"
        reader.seek(500)
        other_sought.set()
        got["second"] = reader.read(2)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert got == {"first": bytes([10, 11, 12, 13]), "second": bytes([500 % 256, 501 % 256])}
    reader.seek(-3, 2)
    assert reader.read() == bytes([253, 254, 255]) and reader.read(5) == b""
    reader.close()

def test_a_catalog_file_gone_before_it_opens_raises_only_its_own_error(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A file deleted between DuckDB's listing and its open (a compaction's grace period ended):
    FileNotFoundError, and no second traceback from the half-made reader's __del__ on stderr."""
    import gc
    import sys

    from dermground.platform.catalog_readonly_fs import PositionedReader

    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(FileNotFoundError):
        PositionedReader(str(tmp_path / "gone.parquet"))
    gc.collect()
    assert unraisable == []


def test_prediction_errors_carry_the_scored_value_and_join_to_lesions(home: Path) -> None:
    cat = Catalog(home / "catalog")
    rows = cat.query("SELECT isic_id, attribute, unit, measured, predicted, error, abs_error, spread "
                     "FROM prediction_errors ORDER BY isic_id, attribute DESC")
    assert rows == [
        {"isic_id": "ISIC_1", "attribute": "areaMM2", "unit": "mm²", "measured": 0.0, "predicted": 2.5,
         "error": 2.5, "abs_error": 2.5, "spread": 0.5},
        {"isic_id": "ISIC_2", "attribute": "areaMM2", "unit": "mm²", "measured": None, "predicted": 5.0,
         "error": None, "abs_error": None, "spread": None},
        {"isic_id": "ISIC_2", "attribute": "A", "unit": "LAB", "measured": None, "predicted": None,
         "error": None, "abs_error": None, "spread": None},
    ]
    # A row written before predictions recorded `measured`: the join to lesions that the docs show.
    (joined,) = cat.query("SELECT e.predicted - a.value AS error, a.anatom_site_general FROM prediction_errors e "
                          "JOIN attributes_long a USING (collection, isic_id, attribute) "
                          "WHERE e.isic_id = 'ISIC_2' AND e.attribute = 'areaMM2'")
    assert joined == {"error": -2.0, "anatom_site_general": "posterior torso"}


def test_attributes_long_and_collection_facts(home: Path) -> None:
    cat = Catalog(home / "catalog")
    counts = cat.query("SELECT collection, isic_id, count(*) AS n FROM attributes_long GROUP BY ALL ORDER BY ALL")
    assert counts == [{"collection": "c1", "isic_id": "ISIC_1", "n": 16}, {"collection": "c1", "isic_id": "ISIC_2", "n": 1},
                      {"collection": "c2", "isic_id": "ISIC_1", "n": 1}]
    assert cat.query("SELECT value, unit FROM attributes_long WHERE isic_id = 'ISIC_1' AND collection = 'c1' "
                     "AND attribute = 'deltaB'") == [{"value": float(ATTRIBUTE_NAMES.index("deltaB")), "unit": "LAB"}]
    facts = {r["collection"]: r for r in cat.query("SELECT * FROM collections")}
    c1, c2 = facts["c1"], facts["c2"]
    assert (c1["lesions"], c1["patients"], c1["train_lesions"], c1["test_lesions"]) == (2, 1, 1, 1)
    assert (c1["ingest_runs"], c1["runs_done"], c1["runs_failed"], c1["partitions"], c1["quarantined"]) == (2, 1, 1, 1, 1)
    assert (c1["fingerprints"], c1["last_run_status"]) == (2, "done")
    assert (c2["runs_running"], c2["last_run_status"], c2["quarantined"]) == (1, "running", 0)
    versions = cat.query("SELECT collection, fingerprint, runs_done, current_lesions FROM collection_versions "
                         "ORDER BY ALL")
    assert versions == [{"collection": "c1", "fingerprint": "fpA", "runs_done": 1, "current_lesions": 2},
                        {"collection": "c1", "fingerprint": "fpOld", "runs_done": 0, "current_lesions": 0},
                        {"collection": "c2", "fingerprint": "fpB", "runs_done": 0, "current_lesions": 1}]



def test_counts_are_integers_in_every_view(home: Path) -> None:
    """A count (unit `count`) is a BIGINT in every view, so pandas, Parquet and JSON get integers:
    collection_versions' sums were HUGEINT (float64 in .df(), decimal128 in `sql --out x.parquet`,
    the string "2" in `sql --out x.json`)."""
    counts = [(v.name, c.name, c.type) for v in dictionary() for c in v.columns if c.unit == "count"]
    assert counts and [x for x in counts if x[2] != "BIGINT"] == []
    con = analyst_catalog.connect(home=home)
    frame = con.sql("SELECT ingested, quarantined FROM collection_versions ORDER BY collection, fingerprint").df()
    con.close()
    assert str(frame["ingested"].dtype) == "int64" and frame["ingested"].tolist() == [2, 2, 2]
    assert frame["quarantined"].tolist() == [0, 0, 0]
    out = home / "versions.json"
    assert _sql(home, "SELECT ingested FROM collection_versions", "--out", str(out)).exit_code == 0
    assert [json.loads(line)["ingested"] for line in out.read_text().splitlines()] == [2, 2, 2]



def test_timestamps_read_in_utc_whatever_the_machines_zone(tmp_path: Path) -> None:
    """The catalog's times are UTC (docs/CATALOG.md) and a guarded connection cannot change its
    zone (the configuration is locked): on a machine set to Tokyo a row written at 23:30 UTC still
    shows as 23:30 on its UTC day, in `dermground sql`, POST /sql and connect() alike."""
    import os
    import subprocess
    import sys

    cat = Catalog(tmp_path / "catalog")
    cat.append("quarantine", [{"collection": "c1", "isic_id": "ISIC_1", "field": "image", "reason": "r",
                               "at": datetime(2026, 1, 1, 23, 30, tzinfo=UTC)}])
    script = (
        "import json, sys\n"
        "from dermground import catalog\n"
        "from dermground.platform.catalog import run_readonly_sql\n"
        "q = \"SELECT CAST(quarantine.at AS DATE)::VARCHAR, hour(quarantine.at), current_setting('TimeZone') FROM quarantine\"\n"
        "con = catalog.connect(catalog_dir=sys.argv[1])\n"
        "print(json.dumps([list(con.execute(q).fetchone()), list(run_readonly_sql(sys.argv[1], q).rows[0])]))\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "catalog")], capture_output=True, text=True,
                          env={**os.environ, "TZ": "Asia/Tokyo"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["2026-01-01", 23, "UTC"]] * 2


# --- the data dictionary ------------------------------------------------------------------------
def test_every_view_and_column_is_described_and_catalog_md_is_current() -> None:
    views = dictionary()
    names = {v.name for v in views}
    assert set(TABLES) <= names and {"prediction_errors", "retrieval_hits", "attributes_long", "collections"} <= names
    assert undescribed(views) == [], "describe these in platform/catalog_dictionary.py"
    lesions = next(v for v in views if v.name == "lesions")
    area = next(c for c in lesions.columns if c.name == "areaMM2")
    assert (area.type, area.unit) == ("DOUBLE", "mm²")
    committed = (REPO / DOC_PATH).read_text(encoding="utf-8")
    assert committed == render_markdown(views), \
        "docs/CATALOG.md is out of date: run `dermground catalog dictionary --out docs/CATALOG.md`"


# --- `dermground sql` ---------------------------------------------------------------------------
def _sql(home: Path, *args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, ["--home", str(home), "sql", *args], input=stdin)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json"])
def test_sql_out_writes_every_row(home: Path, suffix: str) -> None:
    out = home / f"result{suffix}"
    done = _sql(home, "SELECT isic_id, measured FROM prediction_errors ORDER BY isic_id, attribute",
                "--out", str(out))
    assert done.exit_code == 0, done.output
    assert "wrote 3 rows x 2 columns" in done.stderr
    if suffix == ".parquet":
        rows = pq.read_table(out).to_pylist()
    elif suffix == ".csv":
        rows = pcsv.read_csv(out).to_pylist()
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["isic_id"] for r in rows] == ["ISIC_1", "ISIC_2", "ISIC_2"]
    assert [r["measured"] for r in rows] == [0.0, None, None]
    assert not list(home.glob(".result*.tmp"))
    refused = _sql(home, "DELETE FROM lesions", "--out", str(home / "x.parquet"))
    assert refused.exit_code == 1 and "only SELECT" in refused.output and not (home / "x.parquet").exists()
    bad = _sql(home, "SELECT 1", "--out", str(home / "x.xlsx"))
    assert bad.exit_code == 2 and ".parquet, .csv or .json" in bad.output


def test_sql_json_outputs_write_sums_and_decimals_as_numbers(home: Path) -> None:
    """sum() of a BIGINT is a HUGEINT and `1.5` a DECIMAL: both JSON outputs write numbers, like
    POST /sql (`--out x.json` wrote the strings "2" and "1.5", `--format json` the string "1.5")."""
    query = "SELECT sum(n_points) AS n, 1.5 AS d FROM ingest_partitions"
    out = home / "sums.json"
    assert _sql(home, query, "--out", str(out)).exit_code == 0
    printed = _sql(home, query, "--format", "json")
    assert printed.exit_code == 0, printed.output
    assert json.loads(out.read_text()) == json.loads(printed.stdout)[0] == {"n": 2, "d": 1.5}
    assert isinstance(json.loads(out.read_text())["n"], int)


def test_sql_schema_prints_types_units_and_meanings(home: Path) -> None:
    result = _sql(home, "--schema")
    assert result.exit_code == 0, result.output
    assert "prediction_errors: Per prediction run" in result.output
    line = next(x for x in result.output.splitlines() if x.strip().startswith("percentile"))
    assert "DOUBLE" in line and "[0-100]" in line


def test_sql_shell_runs_multi_line_statements_and_dot_commands(home: Path) -> None:
    script = ("SELECT count(*) AS n\n  FROM lesions\n WHERE collection = 'c1';\n"
              ".schema quarantine\n"
              "SELECT 'a;b' AS s; SELECT 2 AS two;\n")
    result = _sql(home, stdin=script)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "n\n-\n2\n(1 row)" in out
    assert "quarantine: Records that ingest refused" in out and "reason" in out
    assert "a;b" in out and "two" in out


def test_sql_shell_uses_the_guard_and_stops_piped_input_at_a_refusal(home: Path) -> None:
    result = _sql(home, stdin="SELECT 1 AS one;\nDROP VIEW lesions;\nSELECT 3 AS three;\n")
    assert result.exit_code == 1
    assert "one" in result.stdout and "three" not in result.stdout
    assert "only SELECT queries are allowed, this is a DROP statement" in result.stderr
    assert Catalog(home / "catalog").query("SELECT count(*) AS n FROM lesions") == [{"n": 3}]


def test_statement_splitting_keeps_strings_and_dot_commands_whole() -> None:
    assert split_statements("SELECT ';' AS x; SELECT 2;") == ["SELECT ';' AS x", "SELECT 2"]
    assert list(statements(["SELECT 1\n", "  + 1;\n", ".tables\n", "SELECT 3"])) == \
        ["SELECT 1\n  + 1", ".tables", "SELECT 3"]



def test_a_comment_after_the_semicolon_still_ends_the_statement(home: Path) -> None:
    """`SELECT ...; -- why` runs at once, and a dot command after it stays a command; a `;` inside
    a comment or an unfinished string does not end a statement."""
    assert list(statements(["SELECT 1; -- the count\n", ".tables\n", "SELECT 2;\n"])) == \
        ["SELECT 1; -- the count", ".tables", "SELECT 2"]
    assert list(statements(["SELECT 1 -- not the end;\n", "  + 1;\n"])) == ["SELECT 1 -- not the end;\n  + 1"]
    assert list(statements(["SELECT 'a;\n", "b' AS s;\n"])) == ["SELECT 'a;\nb' AS s"]
    result = _sql(home, stdin="SELECT count(*) AS n FROM lesions; -- all collections\n.tables\n")
    assert result.exit_code == 0, result.output
    assert "n\n-\n3\n(1 row)" in result.stdout and "prediction_errors" in result.stdout


def test_the_sql_guard_sees_new_and_compacted_files(home: Path) -> None:
    from dermground.platform.catalog import run_readonly_sql
    from dermground.platform.catalog_compact import compact

    catalog_dir = home / "catalog"
    count = "SELECT count(*) FROM lesions_history"
    assert run_readonly_sql(catalog_dir, count).rows == [(3,)]
    Catalog(catalog_dir).append("lesions", [{"isic_id": "ISIC_3", "collection": "c1", "split": "train"}])
    assert run_readonly_sql(catalog_dir, count).rows == [(4,)]
    compact(catalog_dir)
    assert run_readonly_sql(catalog_dir, count).rows == [(4,)]


def test_the_documented_analysis_runs_on_a_catalog(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import runpy

    Catalog(home / "catalog").append("retrieval_hits", [
        {"run_id": "retrieval-1", "collection": "c1", "method": method, "attribute": "areaMM2",
         "query_isic_id": "ISIC_1", "rank": 1, "hit_isic_id": "ISIC_2", "query_value": 0.0, "hit_value": 7.0,
         "difference": 7.0, "percentile": percentile} for method, percentile in (("image", 12.5), ("random", 50.0))])
    example = runpy.run_path(str(REPO / "docs" / "analysis_example.py"))
    out = home / "by_site.parquet"
    example["main"](["--home", str(home), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "== prediction errors of the latest run e1" in printed and "truncated JPEG" in printed
    # ISIC_2's row predates `measured`: its error comes from the lesion (|5 - 7|).
    assert pq.read_table(out).to_pylist() == [{"site": "head/neck", "attribute": "areaMM2", "n": 1, "mae": 2.5},
                                             {"site": "posterior torso", "attribute": "areaMM2", "n": 1, "mae": 2.0}]
    medians = printed.split("median percentile of the hits")[1]
    assert "12.5" in medians and "50.0" in medians


def test_terminal_input_keeps_a_history_and_prompts_for_continuations(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from dermground.platform.sql_shell import CONTINUE, PROMPT, terminal_lines

    typed = iter(["SELECT 1", "  AS one;", ".tables", "SELECT 'never", KeyboardInterrupt, "SELECT 2;"])
    prompts: list[str] = []

    def fake_input(prompt: str) -> str:  # the terminal (stdlib input), not our code
        prompts.append(prompt)
        item = next(typed, EOFError)
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item()
        return item

    monkeypatch.setattr(builtins, "input", fake_input)
    history = tmp_path / "home" / "sql_history"
    assert list(statements(terminal_lines(history))) == ["SELECT 1\n  AS one", ".tables", "SELECT 2"]
    assert prompts == [PROMPT, CONTINUE, PROMPT, PROMPT, CONTINUE, PROMPT, PROMPT]
    assert history.exists()


def test_the_documented_r2_is_the_r2_eval_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/analysis_example.py divided by the variance of every measured value of the run, also
    of the images whose answer did not parse, while eval scores R² over the parsed answers only
    (eval/predictions.score_predictions): 0.96 printed for an R² of 0.25."""
    import runpy

    from dermground.eval.predictions import r2_score

    measured, predicted = [1.0, 2.0, 3.0, 10.0], [1.5, 2.5, 2.0, None]
    Catalog(tmp_path / "catalog").append("predictions", [
        {"run_id": "e1", "collection": "c1", "isic_id": f"ISIC_{i}", "attribute": "areaMM2", "value": p,
         "ok": p is not None, "measured": m} for i, (m, p) in enumerate(zip(measured, predicted, strict=True))])
    runpy.run_path(str(REPO / "docs" / "analysis_example.py"))["main"](["--home", str(tmp_path)])
    (line,) = [li for li in capsys.readouterr().out.splitlines() if li.strip().startswith("areaMM2")]
    expected = r2_score(measured[:3], predicted[:3])
    assert expected == 0.25 and float(line.split()[-1]) == pytest.approx(expected)
