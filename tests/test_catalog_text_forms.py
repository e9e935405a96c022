"""What `dermground sql` writes for values an analyst meets in the world: non-ASCII ids and
patients (and queries naming them), and one text form per DuckDB type in every output."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dermground.platform.catalog import Catalog
from dermground.platform.cli import cli
from dermground.platform.commands import context

pytestmark = pytest.mark.usefixtures("fresh_cli_settings")


def _sql(home: Path, *args: str):
    context._current = None
    return CliRunner().invoke(cli, ["--home", str(home), "sql", *args])


def test_a_query_naming_a_non_ascii_id_runs_in_every_output(tmp_path: Path) -> None:
    """`--out` failed with an IndexError traceback on a query holding a non-ASCII character (a
    patient 'Zoë', a site in 'Zürich'): the closing-semicolon check took DuckDB's token offsets,
    which count UTF-8 bytes, for character indexes."""
    Catalog(tmp_path / "catalog").append("lesions", [
        {"isic_id": "ISIC_é1", "patient_id": "Zoë Ørsted", "split": "train", "collection": "c1", "areaMM2": 1.5},
        {"isic_id": "ISIC_2", "patient_id": "P2", "split": "test", "collection": "c1", "areaMM2": 2.5}])
    expected = [{"isic_id": "ISIC_é1", "patient_id": "Zoë Ørsted", "areaMM2": 1.5}]
    query = "SELECT isic_id, patient_id, areaMM2 FROM lesions WHERE patient_id = 'Zoë Ørsted'"
    printed = _sql(tmp_path, query, "--format", "json")
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == expected
    table = _sql(tmp_path, query)
    assert table.exit_code == 0 and "Zoë Ørsted" in table.stdout, table.output
    for suffix, ending in ((".parquet", ""), (".csv", "; -- la même"), (".json", ";")):
        out = tmp_path / f"r{suffix}"
        done = _sql(tmp_path, query + ending, "--max-rows", "5", "--out", str(out))
        assert done.exit_code == 0, (suffix, done.output)
        rows = (pq.read_table(out).to_pylist() if suffix == ".parquet" else pcsv.read_csv(out).to_pylist()
                if suffix == ".csv" else [json.loads(line) for line in out.read_text("utf-8").splitlines()])
        assert rows == expected, suffix


# A BLOB with a NUL, a byte past ASCII and a quote, booleans, times with and without a fraction or
# an offset, a BIT, and a NULL of each.
TYPED = ("SELECT '\\x00a\\xAA\\x22'::BLOB AS b, true AS t, false AS f, TIME '10:11:12.5' AS tm, "
         "TIME '10:00:00' AS tm0, "
         "TIMETZ '10:11:12-05:30' AS tz, BIT '0101' AS bits, NULL::BLOB AS nb, NULL::BOOLEAN AS nt, NULL::TIME AS ntm")
TYPED_TEXT = {"b": "\\x00a\\xAA\\x22", "t": "true", "f": "false", "tm": "10:11:12.500000", "tm0": "10:00:00",
              "tz": "10:11:12-05:30", "bits": "0101"}


def test_every_text_output_writes_blobs_booleans_and_times_alike(tmp_path: Path) -> None:
    """A BLOB printed as Python's repr (b'\\x00a\\xaa"') in the table, CSV and JSON outputs, and
    `--out x.csv` failed on it ('Invalid UTF8 payload', a traceback); booleans read True in the
    table and CSV but true in `--out x.csv`; a whole-second TIME read 10:00:00.000000 in `--out
    x.csv` only, a TIME WITH TIME ZONE lost its offset in the --out files, and a BIT was written
    as its internal bytes (b'\\x04\\xf5'). Now one text form per type, in every output."""
    nulls = {"nb": "", "nt": "", "ntm": ""}

    def from_csv(text: str) -> dict:
        (row,) = list(csv.DictReader(io.StringIO(text)))
        return row

    printed = {fmt: _sql(tmp_path, TYPED, "--format", fmt) for fmt in ("table", "csv", "json")}
    assert all(r.exit_code == 0 for r in printed.values()), {f: r.output for f, r in printed.items()}
    header, _, cells = printed["table"].stdout.splitlines()
    assert dict(zip(header.split(), cells.split(), strict=True)) == {**TYPED_TEXT, "nb": "NULL", "nt": "NULL",
                                                                    "ntm": "NULL"}
    assert from_csv(printed["csv"].stdout) == {**TYPED_TEXT, **nulls}
    as_json = {**TYPED_TEXT, "t": True, "f": False, "nb": None, "nt": None, "ntm": None}
    assert json.loads(printed["json"].stdout) == [as_json]
    for suffix in (".csv", ".json"):
        out = tmp_path / f"typed{suffix}"
        done = _sql(tmp_path, TYPED, "--out", str(out))
        assert done.exit_code == 0, (suffix, done.output)
        text = out.read_text("utf-8")
        assert (from_csv(text) if suffix == ".csv" else json.loads(text)) == (
            {**TYPED_TEXT, **nulls} if suffix == ".csv" else as_json), suffix
    parquet = tmp_path / "typed.parquet"  # keeps its types: the bytes and booleans as they are
    assert _sql(tmp_path, TYPED, "--out", str(parquet)).exit_code == 0
    (row,) = pq.read_table(parquet).to_pylist()
    assert row["b"] == b"\x00a\xaa\x22" and row["t"] is True and row["bits"] == "0101"


def test_blob_text_is_the_text_duckdb_writes_for_every_byte() -> None:
    import duckdb

    from dermground.platform.sql_text import blob_text

    every = bytes(range(256))
    assert blob_text(every) == duckdb.execute("SELECT CAST(?::BLOB AS VARCHAR)", [every]).fetchone()[0]


def test_post_sql_answers_a_blob_as_duckdb_writes_it(tmp_path: Path) -> None:
    """POST /sql answered a BLOB as Python's repr ("b'\\x00a'")."""
    from fastapi.testclient import TestClient

    from dermground.platform.api.app import create_app
    from dermground.platform.settings import Settings

    settings = Settings(home=tmp_path, api_read_key="r" * 16, api_admin_key="a" * 16)
    with TestClient(create_app(settings)) as client:
        response = client.post("/sql", headers={"X-API-Key": "a" * 16}, json={"query": TYPED})
    assert response.status_code == 200, response.text
    answered = dict(zip(response.json()["columns"], response.json()["rows"][0], strict=True))
    assert answered == {**TYPED_TEXT, "t": True, "f": False, "nb": None, "nt": None, "ntm": None}


def test_the_shell_ends_a_statement_holding_non_ascii_text_at_its_semicolon(tmp_path: Path) -> None:
    """The shell read DuckDB's token offsets (UTF-8 bytes) as character indexes: `SELECT 'Zoë';`
    did not end at its ';' (at a terminal the shell kept prompting for more), and a longer non-ASCII
    string ended the shell with an IndexError traceback."""
    from dermground.platform.sql_shell import complete, statements

    assert complete("SELECT 'Zoë' AS p;\n") and complete("SELECT 'Zoë' AS p; -- l'été\n")
    assert not complete("SELECT 'Zoë;' AS p\n")
    lines = iter(["SELECT 'Zoë' AS p;\n", "SELECT 2;\n"])
    assert next(statements(lines)) == "SELECT 'Zoë' AS p" and next(lines) == "SELECT 2;\n"  # ended at line 1
    context._current = None
    piped = CliRunner().invoke(cli, ["--home", str(tmp_path), "sql"], input="SELECT 'ëëëëëëëë' AS p;\n")
    assert piped.exit_code == 0 and "ëëëëëëëë\n(1 row)" in piped.stdout, piped.output


def test_the_table_format_keeps_each_row_on_one_line_and_aligned(tmp_path: Path) -> None:
    """A line break in a value (a quarantine reason) broke a row over two lines of the table, and
    the padding counted characters: a CJK patient id (two columns a character) or an accent typed
    as a combining mark shifted every column after it."""
    Catalog(tmp_path / "catalog").append("quarantine", [
        {"collection": "c1", "run_id": "r1", "isic_id": "ISIC_患者一号", "field": "image",
         "reason": "cannot decode:\nline 2"},
        {"collection": "c1", "run_id": "r1", "isic_id": "ISIC_Rene\u0301", "field": "image", "reason": "tab\there"},
        {"collection": "c1", "run_id": "r1", "isic_id": "ISIC_1", "field": "patient_id", "reason": "missing"}])
    printed = _sql(tmp_path, "SELECT isic_id, reason, field FROM quarantine ORDER BY field, isic_id")
    assert printed.exit_code == 0, printed.output
    lines = printed.stdout.splitlines()
    assert len(lines) == 5, lines  # header, rule, three rows
    assert lines[2:] == ["ISIC_Rene\u0301" + " " * 6 + "tab\\there" + " " * 15 + "image",
                         "ISIC_患者一号" + " " * 2 + "cannot decode:\\nline 2" + " " * 2 + "image",
                         "ISIC_1" + " " * 9 + "missing" + " " * 17 + "patient_id"]


def test_out_json_writes_a_map_as_the_object_format_json_prints(tmp_path: Path) -> None:
    """`--out x.json` wrote a MAP (histogram(split), an everyday aggregate) as a list of [key, value]
    pairs, [["test", 1], ["train", 2]], where `--format json` prints {"test": 1, "train": 2}."""
    Catalog(tmp_path / "catalog").append("lesions", [
        {"isic_id": f"ISIC_{i}", "split": split, "collection": "c1"}
        for i, split in enumerate(("train", "train", "test"))])
    query = "SELECT histogram(split) AS splits, [MAP {'n': 1}] AS maps, {'m': MAP {2: 'b'}} AS nested FROM lesions"
    expected = {"splits": {"test": 1, "train": 2}, "maps": [{"n": 1}], "nested": {"m": {"2": "b"}}}
    printed = _sql(tmp_path, query, "--format", "json")
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == [expected]
    out = tmp_path / "splits.json"
    assert _sql(tmp_path, query, "--out", str(out)).exit_code == 0
    assert json.loads(out.read_text("utf-8")) == expected


def test_a_map_keyed_by_dates_prints_in_every_output(tmp_path: Path) -> None:
    """histogram(written_at::DATE) (lesions per day) is a MAP with DATE keys: every text output
    failed with 'TypeError: keys must be str, int, float, bool or None, not date' (a traceback).
    A key is now written as its value is."""
    Catalog(tmp_path / "catalog").append("lesions", [
        {"isic_id": f"ISIC_{i}", "collection": "c1", "written_at": datetime(2026, 1, 1 + i // 2, tzinfo=UTC)}
        for i in range(3)])
    query = "SELECT histogram(written_at::DATE) AS per_day, MAP {1.5::DECIMAL(3,1): true} AS by_decimal FROM lesions"
    expected = {"per_day": {"2026-01-01": 2, "2026-01-02": 1}, "by_decimal": {"1.5": True}}
    printed = {fmt: _sql(tmp_path, query, "--format", fmt) for fmt in ("json", "csv", "table")}
    assert all(r.exit_code == 0 for r in printed.values()), {f: r.output for f, r in printed.items()}
    assert json.loads(printed["json"].stdout) == [expected]
    (row,) = list(csv.DictReader(io.StringIO(printed["csv"].stdout)))
    assert {k: json.loads(v) for k, v in row.items()} == expected
    assert '{"2026-01-01": 2, "2026-01-02": 1}' in printed["table"].stdout
    out = tmp_path / "per_day.json"
    assert _sql(tmp_path, query, "--out", str(out)).exit_code == 0
    assert json.loads(out.read_text("utf-8")) == expected


def test_csv_printed_quotes_a_value_holding_a_carriage_return(tmp_path: Path) -> None:
    """`--format csv` wrote a value holding a carriage return (a reason copied from a Windows text)
    unquoted: Python's csv reader refused the output ('new-line character seen in unquoted field')
    and other readers split the row. It is quoted now, as `--out x.csv` quotes it."""
    query = "SELECT 'cannot decode' || chr(13) || chr(10) || 'JPEG' AS reason, 'x' || chr(13) || 'y' AS r, 2 AS n"
    printed = _sql(tmp_path, query, "--format", "csv")
    assert printed.exit_code == 0, printed.output
    text = printed.stdout_bytes.decode("utf-8")  # .stdout turns every \r\n into \n
    assert list(csv.reader(io.StringIO(text, newline=""))) == [
        ["reason", "r", "n"], ["cannot decode\r\nJPEG", "x\ry", "2"]]
    out = tmp_path / "r.csv"
    assert _sql(tmp_path, query, "--out", str(out)).exit_code == 0
    assert pcsv.read_csv(out).to_pylist() == [{"reason": "cannot decode\r\nJPEG", "r": "x\ry", "n": 2}]
