"""`dermground sql` outputs hold what a query can answer: valid JSON for NaN and infinities, and
every DuckDB type in --out files (intervals, lists, structs)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dermground.platform.cli import cli
from dermground.platform.commands import context


# The CLI keeps the settings it loaded for the process: each test's --home must be read afresh.
pytestmark = pytest.mark.usefixtures("fresh_cli_settings")


def _sql(home: Path, *args: str):
    context._current = None
    return CliRunner().invoke(cli, ["--home", str(home), "sql", *args])


def _strict_json(text: str) -> object:
    """json.loads refusing NaN and Infinity, as JavaScript, jq and most JSON readers do."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# corr() over a constant column is NaN: an analyst's everyday way to meet one.
NON_FINITE = ("SELECT corr(a, b) AS r, 'inf'::DOUBLE AS up, '-inf'::DOUBLE AS down, [1.5, 'nan'::DOUBLE] AS xs "
              "FROM (VALUES (1.0, 2.0), (1.0, 3.0)) t(a, b)")


def test_json_outputs_write_nan_and_infinities_as_null_like_post_sql(tmp_path: Path) -> None:
    printed = _sql(tmp_path, NON_FINITE, "--format", "json")
    assert printed.exit_code == 0, printed.output
    expected = {"r": None, "up": None, "down": None, "xs": [1.5, None]}
    assert _strict_json(printed.stdout) == [expected]
    out = tmp_path / "r.json"
    written = _sql(tmp_path, NON_FINITE, "--out", str(out))
    assert written.exit_code == 0, written.output
    assert [_strict_json(line) for line in out.read_text().splitlines()] == [expected]


# How long each run took (an INTERVAL), the statuses it went through (a list), a struct: what
# `--out x.csv` and `--out x.parquet` failed on with a pyarrow traceback.
RUN_TIMES = ("SELECT run_id, max(finished_at) - min(started_at) AS took, list(status ORDER BY written_at) AS statuses, "
             "{'n': max(n_ingested)} AS counts FROM ingest_runs_history GROUP BY run_id")


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json"])
def test_out_files_take_intervals_lists_and_structs(tmp_path: Path, suffix: str) -> None:
    from datetime import UTC, datetime, timedelta

    from dermground.platform.catalog import Catalog

    started = datetime(2026, 1, 1, tzinfo=UTC)
    run = {"run_id": "r1", "collection": "c1", "started_at": started}
    Catalog(tmp_path / "catalog").append("ingest_runs", [{**run, "status": "running", "written_at": started}])
    Catalog(tmp_path / "catalog").append("ingest_runs", [{**run, "status": "done", "n_ingested": 7,
                                                          "finished_at": started + timedelta(days=1, minutes=90)}])
    out = tmp_path / f"runs{suffix}"
    done = _sql(tmp_path, RUN_TIMES, "--out", str(out))
    assert done.exit_code == 0, done.output
    if suffix == ".parquet":
        (row,) = pq.read_table(out).to_pylist()
        assert row["statuses"] == ["running", "done"] and row["counts"] == {"n": 7}
    elif suffix == ".csv":
        (row,) = pcsv.read_csv(out).to_pylist()
        assert json.loads(row["statuses"]) == ["running", "done"] and json.loads(row["counts"]) == {"n": 7}
    else:
        (row,) = [_strict_json(line) for line in out.read_text().splitlines()]
        assert row["statuses"] == ["running", "done"] and row["counts"] == {"n": 7}
    assert row["run_id"] == "r1" and row["took"] == "1 day 01:30:00"


@pytest.mark.parametrize("unusable", ["a folder in its place", "a read-only file system"])
def test_the_shell_runs_when_its_history_file_cannot_be_read_or_written(tmp_path: Path, unusable: str,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Another user's DERMGROUND_HOME, or one on a read-only mount: the shell stopped with an
    OSError traceback before its first prompt (history unreadable) or after the last (unwritable)."""
    import builtins

    from dermground.platform.sql_shell import statements, terminal_lines

    if unusable == "a folder in its place":
        history = tmp_path / "sql_history"
        history.mkdir()
    else:
        history = Path("/proc/dermground-test/sql_history")  # /proc takes no new files, even from root
    typed = iter(["SELECT 1;"])

    def fake_input(prompt: str) -> str:  # the terminal (stdlib input), not our code
        item = next(typed, None)
        if item is None:
            raise EOFError
        return item

    monkeypatch.setattr(builtins, "input", fake_input)
    assert list(statements(terminal_lines(history))) == ["SELECT 1"]
    assert f"history is not kept: {history}" in capsys.readouterr().err


def test_a_pivot_without_values_is_refused_with_the_form_that_runs(tmp_path: Path) -> None:
    """PIVOT without an IN list is a MULTI statement to DuckDB: the refusal said 'this is a MULTI
    statement; the catalog is read-only', which names neither the cause nor the way out."""
    from dermground.platform.catalog import Catalog

    Catalog(tmp_path / "catalog").append("lesions", [{"isic_id": "ISIC_1", "split": "train", "collection": "c1"}])
    refused = _sql(tmp_path, "SELECT * FROM (PIVOT lesions ON split USING count(*))")
    assert refused.exit_code == 1
    assert "PIVOT without an IN list" in refused.output and "MULTI" not in refused.output
    listed = _sql(tmp_path, "PIVOT lesions ON split IN ('train', 'test') USING count(*) GROUP BY collection",
                  "--format", "csv")
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines() == ["collection,train,test", "c1,1,0"]


def test_out_into_the_catalog_folder_is_refused_and_the_catalog_is_unchanged(tmp_path: Path) -> None:
    """`--out` wrote with Python, past the read-only guard: a result saved in a table folder became
    a lesions row (NULL collection) and `dermground check` failed reading it."""
    from dermground.platform.catalog import Catalog

    catalog = Catalog(tmp_path / "catalog")
    catalog.append("lesions", [{"isic_id": "ISIC_1", "split": "train", "collection": "c1"}])
    for out in (catalog.dir / "lesions" / "by_split.parquet", catalog.dir / "mine.csv"):
        refused = _sql(tmp_path, "SELECT split, count(*) AS n FROM lesions GROUP BY split", "--out", str(out))
        assert refused.exit_code == 2 and "inside the catalog folder" in refused.output
        assert not out.exists()
    assert catalog.query("SELECT count(*) AS n FROM lesions_history") == [{"n": 1}]
    elsewhere = _sql(tmp_path, "SELECT split FROM lesions", "--out", str(tmp_path / "by_split.parquet"))
    assert elsewhere.exit_code == 0, elsewhere.output


def test_ctrl_c_during_a_query_stops_it_and_the_shell_takes_the_next(tmp_path: Path) -> None:
    """At a terminal, Ctrl-C while a query ran ended the shell with 'RuntimeError: Query
    interrupted' and a traceback (and lost the session); it now stops the query only."""
    import os
    import pty
    import select
    import signal
    import sys
    import time

    from dermground.platform.catalog import Catalog

    Catalog(tmp_path / "catalog").append("lesions", [{"isic_id": "ISIC_1", "collection": "c1"}])
    pid, terminal = pty.fork()
    if pid == 0:  # the child: the shell at a terminal
        os.environ["DERMGROUND_SQL_TIMEOUT_S"] = "600"  # the stop below is the user's, not the timeout's
        os.execv(str(Path(sys.executable).parent / "dermground"), ["dermground", "--home", str(tmp_path), "sql"])
    seen = ""

    def wait_for(text: str, deadline_s: float = 120.0) -> None:
        nonlocal seen
        end = time.monotonic() + deadline_s
        while text not in seen:
            assert time.monotonic() < end, f"no {text!r} from the shell; it printed:\n{seen}"
            if select.select([terminal], [], [], 0.2)[0]:
                try:
                    seen += os.read(terminal, 65536).decode(errors="replace")
                except OSError:  # the shell ended
                    raise AssertionError(f"the shell ended before {text!r}:\n{seen}") from None

    try:
        wait_for("sql> ")
        os.write(terminal, b"SELECT count(*) FROM range(100000000000) a, lesions;\n")
        # The statement echoed with its line end: readline has accepted the line (the echo of the
        # text alone came before it read the newline; a Ctrl-C then only dropped the typed statement,
        # as at any prompt, and 'interrupted' never came).
        wait_for("range(100000000000) a, lesions;\r\n")
        time.sleep(1.0)  # (not a limit: once the line is accepted the interrupt is handled wherever it lands)
        os.write(terminal, b"\x03")
        wait_for("interrupted (Ctrl-C)")
        os.write(terminal, b"SELECT 6 * 7 AS answer;\n")
        wait_for("42")
        assert "Traceback" not in seen
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(terminal)


def test_csv_printed_writes_lists_and_structs_as_json_like_the_out_file(tmp_path: Path) -> None:
    """`--format csv` printed a struct as Python's repr ({'n': 7}), which no CSV consumer parses."""
    import csv
    import io

    printed = _sql(tmp_path, "SELECT [1, 2] AS xs, {'n': 7, 'name': 'a'} AS s, MAP {'k': 1.5} AS m", "--format", "csv")
    assert printed.exit_code == 0, printed.output
    (row,) = list(csv.DictReader(io.StringIO(printed.stdout)))
    assert {k: _strict_json(v) for k, v in row.items()} == {"xs": [1, 2], "s": {"n": 7, "name": "a"},
                                                            "m": {"k": 1.5}}


def test_post_sql_answers_lists_and_structs_as_json_not_python_text(tmp_path: Path) -> None:
    """POST /sql answered a list(...) as the string "[1, 2]" and a struct as "{'n': 7}" (Python's
    repr), which a client cannot parse as JSON."""
    from fastapi.testclient import TestClient

    from dermground.platform.api.app import create_app
    from dermground.platform.settings import Settings

    settings = Settings(home=tmp_path, api_read_key="r" * 16, api_admin_key="a" * 16)
    with TestClient(create_app(settings)) as client:
        response = client.post("/sql", headers={"X-API-Key": "a" * 16},
                               json={"query": "SELECT [1, 2] AS xs, {'n': 7, 'at': DATE '2026-01-02'} AS s, "
                                              "'nan'::DOUBLE AS r"})
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [[[1, 2], {"n": 7, "at": "2026-01-02"}, None]]


# A month, a negative duration, intervals in a list, times with and without fractions.
TIMES = ("SELECT INTERVAL 1 MONTH + INTERVAL 2 DAY + INTERVAL 3 HOUR AS took, -INTERVAL 1 SECOND AS early, "
         "[INTERVAL 1 DAY, INTERVAL 90 MINUTE] AS laps, TIMESTAMPTZ '2026-01-01 10:00:00+00' AS at, "
         "TIMESTAMPTZ '2026-01-01 10:00:00.25+00' AS at_frac")
TIMES_WRITTEN = {"took": "1 month 2 days 03:00:00", "early": "-00:00:01", "laps": ["1 day", "01:30:00"],
                 "at": "2026-01-01T10:00:00+00:00", "at_frac": "2026-01-01T10:00:00.250000+00:00"}


def test_every_output_writes_intervals_and_times_alike(tmp_path: Path) -> None:
    """`--format` printed intervals as Python does ('32 days, 3:00:00' for a month and two days,
    '-1 day, 23:59:59' for minus one second, a list as [datetime.timedelta(days=1)]) while `--out`
    wrote DuckDB's text ('1 month 2 days 03:00:00', a list in JSON as [[0, 1, 0]]), and `--out x.csv`
    wrote times as '2026-01-01 10:00:00.000000Z'. Now every output writes intervals as DuckDB does
    and times as ISO 8601."""
    import csv
    import io

    def from_csv(text: str) -> dict:
        (row,) = list(csv.DictReader(io.StringIO(text)))
        return {**row, "laps": json.loads(row["laps"])}

    printed = {fmt: _sql(tmp_path, TIMES, "--format", fmt) for fmt in ("json", "csv", "table")}
    assert all(r.exit_code == 0 for r in printed.values()), {f: r.output for f, r in printed.items()}
    assert _strict_json(printed["json"].stdout) == [TIMES_WRITTEN]
    assert from_csv(printed["csv"].stdout) == TIMES_WRITTEN
    assert printed["table"].stdout.splitlines()[2].split("  ")[:3] == [
        "1 month 2 days 03:00:00", "-00:00:01", '["1 day", "01:30:00"]']
    for suffix in (".json", ".csv"):
        out = tmp_path / f"times{suffix}"
        assert _sql(tmp_path, TIMES, "--out", str(out)).exit_code == 0
        assert (_strict_json(out.read_text()) if suffix == ".json" else from_csv(out.read_text())) == TIMES_WRITTEN


def test_out_with_max_rows_takes_a_statement_ended_by_a_semicolon_and_a_comment(tmp_path: Path) -> None:
    """`--out` with --max-rows (or a column written as text) wraps the statement in a subquery:
    `SELECT ...; -- why`, as an analyst keeps it in a file, failed with 'syntax error at or near ";"'."""
    out = tmp_path / "r.csv"
    done = _sql(tmp_path, "SELECT range AS n FROM range(5); -- the first rows", "--max-rows", "2", "--out", str(out))
    assert done.exit_code == 0, done.output
    assert pcsv.read_csv(out).to_pylist() == [{"n": 0}, {"n": 1}]


def test_a_failed_select_is_not_told_that_only_one_select_is_allowed(tmp_path: Path) -> None:
    """Every error ended with 'Only one SELECT over the catalog views is allowed', also a misspelt
    column in what was one SELECT: the next step that fits a failed query is the schema."""
    failed = _sql(tmp_path, "SELECT nope FROM lesions")
    assert failed.exit_code == 1
    assert 'query failed: Binder Error: Referenced column "nope" not found' in failed.output
    assert "Only one SELECT" not in failed.output and "`dermground sql --schema` lists every view" in failed.output
    refused = _sql(tmp_path, "DELETE FROM lesions")
    assert refused.exit_code == 1 and "Only one SELECT over the catalog views is allowed" in refused.output


def test_json_outputs_keep_every_column_of_a_join_that_repeats_names(tmp_path: Path) -> None:
    """`SELECT * FROM a JOIN b ON ...` repeats column names, and the JSON outputs kept only the
    last value of each: one table's written_at silently replaced the other's. Repeated names are
    numbered as DuckDB's .df() numbers them."""
    query = "SELECT * FROM (SELECT 1 AS id, 'early' AS at) l JOIN (SELECT 1 AS id, 'late' AS at) r ON l.id = r.id"
    expected = {"id": 1, "at": "early", "id_1": 1, "at_1": "late"}
    printed = _sql(tmp_path, query, "--format", "json")
    assert printed.exit_code == 0, printed.output
    assert _strict_json(printed.stdout) == [expected]
    out = tmp_path / "joined.json"
    assert _sql(tmp_path, query, "--out", str(out)).exit_code == 0
    assert [_strict_json(line) for line in out.read_text().splitlines()] == [expected]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_out_files_of_a_join_that_repeats_names_write_intervals_and_lists(tmp_path: Path, suffix: str) -> None:
    """A result repeating a column name was written without its intervals and lists turned into
    text (they were projected by name): --out x.csv and x.parquet failed with a pyarrow traceback,
    and a Parquet file with a repeated name is one pyarrow and pandas refuse to read."""
    query = ("SELECT * FROM (SELECT 1 AS id, INTERVAL 90 MINUTE AS took, [1, 2] AS xs) l "
             "JOIN (SELECT 1 AS id) r ON l.id = r.id")
    out = tmp_path / f"joined{suffix}"
    done = _sql(tmp_path, query, "--out", str(out))
    assert done.exit_code == 0, done.output
    if suffix == ".parquet":
        assert pq.read_table(out).to_pylist() == [{"id": 1, "took": "01:30:00", "xs": [1, 2], "id_1": 1}]
    else:
        assert out.read_text().splitlines() == ['"id","took","xs","id"', '1,"01:30:00","[1,2]",1']


def test_post_sql_answers_an_interval_in_a_list_as_duckdb_text(tmp_path: Path) -> None:
    """POST /sql answered a top-level interval as DuckDB's text ('1 day') but one in a list or a
    struct as Python's ('1 day, 0:00:00'), so a client met two spellings of one type."""
    from fastapi.testclient import TestClient

    from dermground.platform.api.app import create_app
    from dermground.platform.settings import Settings

    settings = Settings(home=tmp_path, api_read_key="r" * 16, api_admin_key="a" * 16)
    with TestClient(create_app(settings)) as client:
        response = client.post("/sql", headers={"X-API-Key": "a" * 16}, json={"query": TIMES})
    assert response.status_code == 200, response.text
    assert dict(zip(response.json()["columns"], response.json()["rows"][0], strict=True)) == TIMES_WRITTEN


def test_out_with_max_rows_says_when_it_stopped_at_the_limit(tmp_path: Path) -> None:
    """`--out` with --max-rows wrote the first rows and said 'wrote 2 rows' as if that were the
    whole result; the printed formats say '(stopped at 2 rows ...)'."""
    out = tmp_path / "r.csv"
    cut = _sql(tmp_path, "SELECT range AS n FROM range(5)", "--max-rows", "2", "--out", str(out))
    assert cut.exit_code == 0, cut.output
    assert pcsv.read_csv(out).to_pylist() == [{"n": 0}, {"n": 1}]
    assert "stopped at 2 rows" in cut.stderr and "--max-rows" in cut.stderr
    whole = _sql(tmp_path, "SELECT range AS n FROM range(2)", "--max-rows", "2", "--out", str(out))
    assert whole.exit_code == 0, whole.output
    assert "wrote 2 rows" in whole.stderr and "stopped" not in whole.stderr


def test_sql_shell_schema_takes_a_view_ended_by_a_semicolon(tmp_path: Path) -> None:
    """`.schema lesions;` (the semicolon typed as after every statement) said "no view 'lesions;'",
    and `.tables;` "unknown command .tables;"."""
    context._current = None
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "sql"], input=".schema quarantine;\n.tables;\n")
    assert result.exit_code == 0, result.output
    assert "quarantine: Records that ingest refused" in result.stdout
    assert "collections  collection_versions" in result.stdout


def test_sql_shell_schema_takes_a_view_name_in_any_case(tmp_path: Path) -> None:
    """`.schema Quarantine` said "no view 'Quarantine'" while `SELECT * FROM Quarantine` reads it:
    DuckDB's unquoted names are case-insensitive."""
    context._current = None
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "sql"], input=".schema Quarantine\n")
    assert result.exit_code == 0, result.output
    assert "quarantine: Records that ingest refused" in result.stdout


def test_out_where_nothing_can_be_written_is_refused_before_the_query_and_keeps_the_old_file(
        tmp_path: Path) -> None:
    """`--out` under a file or in /proc ended in a FileExistsError / FileNotFoundError traceback,
    and only after the query had run; a write that failed midway (a full disk) did too. The folder
    is now checked first (exit 2, naming --out), and a failed write says so and that a file that
    was there is unchanged."""
    import os

    (tmp_path / "afile").write_text("not a folder")
    for out in (tmp_path / "afile" / "r.csv", Path("/proc/r.parquet")):
        refused = _sql(tmp_path, "SELECT 1 AS a", "--out", str(out))
        assert refused.exit_code == 2 and "--out" in refused.output and "Traceback" not in refused.output, (
            out, refused.output)
        assert isinstance(refused.exception, SystemExit), out
    out = tmp_path / "kept.parquet"
    assert _sql(tmp_path, "SELECT 1 AS a", "--out", str(out)).exit_code == 0
    before = out.read_bytes()
    (tmp_path / f".{out.name}.{os.getpid()}.tmp").mkdir()  # where write_table puts the new file: cannot
    failed = _sql(tmp_path, "SELECT 2 AS a", "--out", str(out))
    assert failed.exit_code == 1 and isinstance(failed.exception, SystemExit), failed.output
    assert f"could not write --out {out}" in failed.output and "unchanged" in failed.output
    assert out.read_bytes() == before
