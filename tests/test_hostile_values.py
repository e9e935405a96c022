"""Odd values in the metadata CSV: read as spreadsheets, pandas and DuckDB read them, or refused
naming the record and the column."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dermground.ingest.synth import generate_dataset
from dermground.ingest.writer import record_payload
from dermground.platform import isic_format as fmt
from dermground.platform.records import LesionRecord, RejectedRecord, read_records
from dermground.platform.store import PayloadError


def test_a_number_with_an_underscore_is_refused_naming_the_column_not_read_as_another_number(tmp_path: Path) -> None:
    """Python's float() reads '1_5' as 15 and '2_000.5' as 2000.5 (digit grouping in source code);
    a spreadsheet, pandas and DuckDB read such a cell as text. The reader trained, stored and
    evaluated 15 for an area written '1_5'; now the row is refused naming the column, and an age so
    written is kept as text (which ingest then refuses, naming age_approx)."""
    data = tmp_path / "data"
    generate_dataset(data, patients=2, images=3, seed=7, size=64, layout="folder", progress=False, workers=1)
    with open(data / fmt.METADATA_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0]["tbp_lv_areaMM2"] = "1_5"
    rows[1]["age_approx"] = "4_0"
    with open(data / fmt.METADATA_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    records = {r.isic_id: r for r in read_records(data)}
    refused = records[rows[0]["isic_id"]]
    assert isinstance(refused, RejectedRecord) and refused.field == "tbp_lv_areaMM2"
    assert "'1_5'" in refused.reason
    kept = records[rows[1]["isic_id"]]
    assert isinstance(kept, LesionRecord) and kept.metadata["age_approx"] == "4_0"
    assert isinstance(records[rows[2]["isic_id"]], LesionRecord)
    with pytest.raises(PayloadError, match="age_approx.*not a number: '4_0'"):
        record_payload(kept, "fingerprint")
