"""The analysts' DuckDB: a read-only, guarded connection with every catalog view.

    con = connect(Path(".dermground/catalog"))
    con.sql("SELECT attribute, avg(abs_error) FROM prediction_errors GROUP BY ALL").df()   # pandas
    con.sql("SELECT * FROM collections").to_arrow_table()                                    # Arrow

It is a plain duckdb.DuckDBPyConnection, so notebooks, `duckdb` itself and BI tools take it as
is. The views live in a database opened read-only (they cannot be dropped or replaced, no table
can be created in it; TEMP tables for one's own intermediate results are fine), the catalog's
files are reached through a read-only file system (platform/catalog_readonly_fs.py: a COPY ... TO
into the catalog folder is refused; DuckDB's own guard cannot tell reading from writing), no other
file can be read or written, and the settings are frozen (platform/catalog.lock_down).
A Python caller owns the machine's files anyway: the strict one-SELECT rule stays with
`dermground sql` and POST /sql (run_readonly_sql).
"""

from __future__ import annotations

import math
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

from dermground.platform.catalog import _create_views, guarded_select, lock_down, without_closing_semicolon
from dermground.platform.catalog_readonly_fs import PREFIX, ReadOnlyCatalogFileSystem
from dermground.platform.sql_text import iso_time_sql


def connect(catalog_dir: Path) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection over the catalog at `catalog_dir`.

    The views read the files that were live when it was made (a consistent snapshot): connect
    again to see later writes. A compaction keeps the files it replaced for its grace period
    (`--keep-minutes`), so a connection older than that must be remade.
    """
    catalog_dir = Path(catalog_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="dermground-views-") as scratch:
        path = os.path.join(scratch, "views.duckdb")
        builder = duckdb.connect(path)
        try:
            builder.register_filesystem(ReadOnlyCatalogFileSystem(catalog_dir))  # binding a view reads its files
            _create_views(builder, catalog_dir, PREFIX)
        finally:
            builder.close()
        # The views are SQL text over Parquet files: the database file only carries them; once
        # open read-only it can go (Linux keeps the open file).
        con = duckdb.connect(path, read_only=True)
    con.register_filesystem(ReadOnlyCatalogFileSystem(catalog_dir))
    lock_down(con, catalog_dir, PREFIX)
    return con


def query_arrow(catalog_dir: Path, sql: str, *, timeout_s: float, max_rows: int | None = None,
                out_format: str | None = None) -> pa.Table:
    """One analyst SELECT as an Arrow table (the same guard as run_readonly_sql); for --out files.
    `out_format` (".parquet", ".csv", ".json") turns the columns that format cannot hold into text
    (writable_columns). Raises SqlRejected with the reason."""
    con = connect(catalog_dir)
    try:
        with guarded_select(con, sql, Path(catalog_dir).resolve(), timeout_s):
            relation = con.sql(without_closing_semicolon(sql))
            if max_rows is not None:
                relation = relation.limit(max_rows)
            if out_format is not None:
                relation = writable_columns(relation, out_format)
            return relation.to_arrow_table()
    finally:
        con.close()


_NESTED = frozenset({"list", "array", "struct", "map", "union"})
# Offset written after a CSV time, by type: the connection's zone is UTC (catalog.lock_down).
_ISO_ZONE = {"timestamp with time zone": "+00:00", "timestamp": ""}


def writable_columns(relation: duckdb.DuckDBPyRelation, out_format: str) -> duckdb.DuckDBPyRelation:
    """`relation` with the columns `out_format` has no type for as text: an INTERVAL (what
    `finished_at - started_at` is) as DuckDB writes it ('1 day 02:00:00'), for CSV a time as the
    printed formats write it (ISO 8601: '2026-01-01T10:00:00+00:00'; for CSV and JSON a TIME
    too, and for CSV a BLOB as DuckDB writes it, platform/sql_text.py), a BIT as DuckDB writes it
    ('0101'), for Parquet and CSV a
    UNION or a nested value holding an interval as JSON, and for CSV every list, struct or map as
    JSON. Other columns, and every column of a relation that needs none of this, stay as they are."""
    def quoted(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def text(column: str, kind: duckdb.DuckDBPyType) -> str | None:
        if kind.id == "interval":
            return f"CAST({column} AS VARCHAR)"
        # A BIT as DuckDB writes it ('0101'; Arrow holds its internal bytes), in CSV a BLOB too
        # (a CSV file holds text), and a time as the printed formats write it (platform/sql_text.py).
        if kind.id == "bit" or (out_format == ".csv" and kind.id == "blob"):
            return f"CAST({column} AS VARCHAR)"
        if out_format in (".csv", ".json") and (iso := iso_time_sql(column, kind.id)) is not None:
            return iso
        if out_format == ".csv" and kind.id in _ISO_ZONE:  # ISO 8601 as the printed formats write it
            whole, zone = "'%Y-%m-%dT%H:%M:%S", _ISO_ZONE[kind.id] + "'"
            return (f"CASE WHEN microsecond({column}) % 1000000 = 0 THEN strftime({column}, {whole}{zone}) "
                    f"ELSE strftime({column}, {whole}.%f{zone}) END")
        if out_format == ".json" or kind.id not in _NESTED:
            return None
        if out_format == ".csv" or kind.id == "union" or "INTERVAL" in str(kind):
            return f"CAST(to_json({column}) AS VARCHAR)"
        return None

    # Columns by position (#1, #2, ...): a join's result may repeat a name (isic_id of both sides).
    names = relation.columns
    changed = [text(f"#{i}", kind) for i, kind in enumerate(relation.types, start=1)]
    if not any(changed):
        return relation
    columns = ", ".join(f"{expr or f'#{i}'} AS {quoted(name)}"
                        for i, (name, expr) in enumerate(zip(names, changed, strict=True), start=1))
    return relation.project(columns)


OUT_FORMATS = (".parquet", ".csv", ".json")


def refuse_out_in_catalog(catalog_dir: Path, path: Path) -> None:
    """ValueError when `path` (an --out file) lies in the catalog folder: the views read every
    Parquet file of a table folder, so a result written there would count as catalog rows."""
    catalog = Path(catalog_dir).resolve()
    target = Path(path).resolve()
    if target == catalog or catalog in target.parents:
        raise ValueError(f"{path} is inside the catalog folder {catalog}: the catalog is read-only, and a file "
                         "written there would be read as catalog rows; write the result elsewhere")


def write_table(table: pa.Table, path: Path) -> Path:
    """Write a result by its file extension: .parquet, .csv or .json (one JSON object per line),
    atomically (a temporary file renamed into place)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUT_FORMATS:
        raise ValueError(f"--out {path}: unknown extension {suffix or '(none)'}; use one of {', '.join(OUT_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            # A repeated name (a join's isic_id) makes a file pyarrow and pandas refuse to read.
            pq.write_table(table.rename_columns(unique_names(table.column_names)), tmp)
        elif suffix == ".csv":
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, tmp)
        else:
            _write_json_lines(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def json_default(value: object) -> object:
    """A value JSON has no type for, as the JSON outputs write it (json.dumps's `default`): a DECIMAL
    or HUGEINT (what sum() of integers gives) as a number, as POST /sql does; anything else as text."""
    from decimal import Decimal

    if isinstance(value, Decimal) and value.is_finite():
        return int(value) if value.as_tuple().exponent >= 0 else float(value)
    return str(value)


_DAY_US = 86_400_000_000


def interval_text(value: timedelta | pa.MonthDayNano) -> str:
    """An interval as DuckDB writes it ('1 month 2 days 03:00:00', '-00:00:01'), as every output of
    `dermground sql` does. A Python timedelta (what DuckDB gives for an interval inside a list or a
    struct) has no months: DuckDB counted each as 30 days, and its days and time are split anew."""
    if isinstance(value, timedelta):
        total = value // timedelta(microseconds=1)
        months, days = 0, int(total / _DAY_US)
        micros = total - days * _DAY_US
    else:
        months, days, micros = value.months, value.days, value.nanoseconds // 1000
    years = int(months / 12)
    parts = [f"{n} {unit}{'' if abs(n) == 1 else 's'}"
             for n, unit in ((years, "year"), (months - 12 * years, "month"), (days, "day")) if n]
    if micros or not parts:
        seconds, fraction = divmod(abs(micros), 1_000_000)
        clock = f"{'-' if micros < 0 else ''}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        parts.append(clock + (f".{fraction:06d}".rstrip("0") if fraction else ""))
    return " ".join(parts)


def json_value(value: object) -> object:
    """A result cell as the JSON outputs write it: a time as ISO text, an interval as DuckDB writes
    it (interval_text), and NaN or an infinity (a corr() over constant values, a division by zero)
    as null, as POST /sql answers: JSON has no number for them, and `NaN` in a file makes every
    strict JSON reader fail."""
    from datetime import date, datetime

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta | pa.MonthDayNano):  # before tuple: a MonthDayNano is one
        return interval_text(value)
    if isinstance(value, bytes | bytearray | memoryview):  # a BLOB as DuckDB writes it, not Python's b'...'
        from dermground.platform.sql_text import blob_text

        return blob_text(value)
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {_json_key(k): json_value(v) for k, v in value.items()}
    return value


def _json_key(key: object) -> object:
    """A MAP's key as a JSON object's name: histogram(written_at::DATE) has dates for keys, which
    json.dumps refuses (TypeError); they are written as their values are ('2026-01-01')."""
    key = json_value(key)
    if key is None or isinstance(key, str | int | float | bool):
        return key
    text = json_default(key)
    return text if isinstance(text, str) else str(text)


def unique_names(columns: list[str]) -> list[str]:
    """Column names for JSON objects, a repeated one numbered as DuckDB's .df() does (`a`, `a_1`):
    `SELECT * FROM lesions l JOIN predictions p ON ...` repeats isic_id, and an object keeps only
    the last value of a key."""
    taken = set(columns)
    seen: set[str] = set()
    names = []
    for name in columns:
        if name in seen:
            n = 1
            while f"{name}_{n}" in taken:
                n += 1
            name = f"{name}_{n}"
            taken.add(name)
        seen.add(name)
        names.append(name)
    return names


def _write_json_lines(table: pa.Table, path: Path) -> None:
    import json

    names = unique_names(table.column_names)
    with open(path, "w", encoding="utf-8") as out:
        for batch in table.to_batches(max_chunksize=65_536):
            # By position: names may repeat. A MAP (what histogram() gives) as an object, as --format
            # json prints it, not as a list of [key, value] pairs.
            columns = [column.to_pylist(maps_as_pydicts="lossy") for column in batch.columns]
            for row in zip(*columns, strict=True):
                out.write(json.dumps({k: json_value(v) for k, v in zip(names, row, strict=True)},
                                     default=json_default, allow_nan=False) + "\n")
