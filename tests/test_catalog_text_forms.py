"""What `dermground sql` writes for values an analyst meets in the world: non-ASCII ids and
patients (and queries naming them), and one text form per DuckDB type in every output."""

from __future__ import annotations

import csv
import io
import json
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
