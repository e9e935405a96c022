"""The catalog: a folder of immutable Parquet files, queried with DuckDB.

Writers never hold a database lock: each append is one new Parquet file written under a temporary
name and renamed into place (it appears whole or not at all), so ingest, the API and analysts
can work at the same time. Views read the files live when they are created (platform/catalog_files.py:
`dermground catalog compact` merges small files without readers ever seeing a half state).
DuckDB is only the query engine, over views:

    lesions            latest row per (collection, isic_id)   (lesions_history: every row)
    predictions        model-predicted attribute values
    ingest_runs        latest row per (collection, run_id)    (ingest_runs_history: every row)
    ingest_partitions  the ledger: one row per commit of a partition (the latest counts)
    quarantine         rejected records with the field and reason
    evaluations        metrics of evaluation runs
    retrieval_hits     per retrieval-evaluation query, method and attribute: the hits and their percentiles
    collection_drops   one row per dropped collection version

Analyst views built on these (prediction_errors, attributes_long, collections, ...) live in
platform/catalog_views.py; what every column means is in platform/catalog_dictionary.py.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from dermground.platform.attributes import ATTRIBUTE_NAMES
from dermground.platform.catalog_files import LiveParts, live_files, live_parts
from dermground.platform.catalog_views import create_analyst_views
from dermground.platform.metadata_fields import STORED_FIELDS
from dermground.platform.sql_tokens import token_starts

_TS = pa.timestamp("us", tz="UTC")
# Arrow type of a metadata field's column, by the field's kind.
_METADATA_TYPES: dict[str, pa.DataType] = {"text": pa.string(), "integer": pa.int64(), "float": pa.float64()}


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(name, dtype) for name, dtype in fields])


TABLES: dict[str, pa.Schema] = {
    "lesions": _schema(
        ("isic_id", pa.string()), ("patient_id", pa.string()), ("split", pa.string()),
        ("image_ref", pa.string()), *((name, pa.float64()) for name in ATTRIBUTE_NAMES),
        *((f.name, _METADATA_TYPES[f.kind]) for f in STORED_FIELDS), ("collection", pa.string()),
        ("fingerprint", pa.string()), ("run_id", pa.string()), ("written_at", _TS)),
    "predictions": _schema(
        ("run_id", pa.string()), ("collection", pa.string()), ("isic_id", pa.string()),
        ("split", pa.string()), ("model_fingerprint", pa.string()), ("adapter", pa.string()),
        ("attribute", pa.string()), ("value", pa.float64()), ("raw", pa.string()), ("ok", pa.bool_()),
        # spread / samples: std and count of the parsed sampled answers (NULL / 0 for greedy runs)
        ("spread", pa.float64()), ("samples", pa.int64()), ("written_at", _TS),
        # measured: the true value the run scored against (NULL in rows written before it existed)
        ("measured", pa.float64())),
    "ingest_runs": _schema(
        ("run_id", pa.string()), ("collection", pa.string()), ("fingerprint", pa.string()),
        ("source", pa.string()), ("split", pa.string()), ("status", pa.string()),
        ("started_at", _TS), ("finished_at", _TS), ("n_ingested", pa.int64()), ("n_skipped", pa.int64()),
        ("n_quarantined", pa.int64()), ("options", pa.string()), ("written_at", _TS)),
    "ingest_partitions": _schema(
        ("run_id", pa.string()), ("collection", pa.string()), ("partition_id", pa.string()),
        ("n_points", pa.int64()), ("ids_hash", pa.string()), ("committed_at", _TS)),
    "quarantine": _schema(
        ("collection", pa.string()), ("run_id", pa.string()), ("isic_id", pa.string()),
        ("field", pa.string()), ("reason", pa.string()), ("at", _TS)),
    "evaluations": _schema(
        ("run_id", pa.string()), ("kind", pa.string()), ("method", pa.string()), ("attribute", pa.string()),
        ("metric", pa.string()), ("value", pa.float64()), ("n", pa.int64()), ("details", pa.string()),
        ("written_at", _TS)),
    "retrieval_hits": _schema(
        ("run_id", pa.string()), ("collection", pa.string()), ("method", pa.string()),
        ("attribute", pa.string()), ("query_isic_id", pa.string()), ("rank", pa.int64()),
        ("hit_isic_id", pa.string()), ("query_value", pa.float64()), ("hit_value", pa.float64()),
        ("difference", pa.float64()), ("percentile", pa.float64()), ("written_at", _TS)),
    # One row per `dermground collections drop`: the version's rows stay, the `collections` view marks it dropped.
    "collection_drops": _schema(
        ("collection", pa.string()), ("name", pa.string()), ("version", pa.string()), ("dropped_at", _TS)),
}
# The timestamp column filled with "now" when a writer leaves it out.
_STAMP = {"lesions": "written_at", "predictions": "written_at", "ingest_runs": "written_at",
          "ingest_partitions": "committed_at", "quarantine": "at", "evaluations": "written_at",
          "retrieval_hits": "written_at", "collection_drops": "dropped_at"}
# Tables whose view keeps only the latest row per key (the full history stays readable).
# A run is keyed by its collection too: a restored or seeded version carries copies of its runs.
_LATEST_BY = {"lesions": ("collection", "isic_id"), "ingest_runs": ("collection", "run_id")}


class CatalogError(ValueError):
    """Rows that do not fit a catalog table (names the table and the column)."""


class SqlRejected(ValueError):
    """An analyst query that the read-only SQL endpoint refuses, with the reason."""


class SqlFailed(SqlRejected):
    """An analyst SELECT the guard allowed that did not finish: DuckDB's error (a misspelt column,
    a type mismatch), a timeout or Ctrl-C."""


class SqlTimedOut(SqlFailed):
    """An analyst SELECT stopped after its time limit."""


class SqlResult(NamedTuple):
    columns: list[str]
    rows: list[tuple]
    truncated: bool  # more rows existed than max_rows


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _duck_type(dtype: pa.DataType) -> str:
    return {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN",
            _TS: "TIMESTAMPTZ"}[dtype]


def _source(schema: pa.Schema, files: Sequence[Path], prefix: str = "") -> str:
    """SELECT of a table's columns over `files` (an empty typed row set when there are none);
    `prefix` goes before each path (a file system protocol, e.g. the analyst's read-only one)."""
    nulls = ", ".join(f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"' for f in schema)
    empty = f"SELECT {nulls} WHERE false"  # so queries work before any write
    if not files:
        return empty
    columns = ", ".join(f'"{f.name}"' for f in schema)
    listed = ", ".join(_sql_literal(prefix + str(f)) for f in files)
    # UNION ALL BY NAME with the typed empty row set: a column no file has yet (added to the schema
    # later) reads as NULL of its declared type instead of failing to bind.
    return f"SELECT {columns} FROM ({empty} UNION ALL BY NAME SELECT * FROM read_parquet([{listed}], union_by_name=true))"


def _create_views(con: duckdb.DuckDBPyConnection, catalog_dir: Path, prefix: str = "") -> None:
    # Creating a view binds its query, and binding read_parquet(union_by_name) reads every file's
    # footer: each view built on `lesions` (attributes_long, collections, ...) would read all of
    # its files again. So the derived views are bound first against typed empty stand-ins of the
    # base views, and each base view is then replaced by its real one, reading each file once
    # (DuckDB binds a view's dependants again at query time; the columns and types are the same).
    for table, schema in TABLES.items():
        for name in (table, f"{table}_history") if table in _LATEST_BY else (table,):
            con.execute(f"CREATE VIEW {name} AS {_source(schema, [], prefix)}")
    create_analyst_views(con)
    for table, schema in TABLES.items():
        folder = catalog_dir / table
        parts = live_parts(folder) if folder.is_dir() else LiveParts(None, [], [])
        if table not in _LATEST_BY:
            con.execute(f"CREATE OR REPLACE VIEW {table} AS {_source(schema, parts.all, prefix)}")
            continue
        keys = ", ".join(_LATEST_BY[table])
        latest = f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {_STAMP[table]} DESC) = 1"
        if parts.current is None:
            # Before its history view is replaced: bound now, it reads no file.
            con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {table}_history {latest}")
        else:
            # A compaction left the latest row per key in one file: only keys written again since
            # need the window; the rest of that file passes through an anti-join.
            current = f"({_source(schema, [parts.current], prefix)})"
            recent = f"({_source(schema, parts.recent, prefix)})"
            con.execute(f"CREATE OR REPLACE VIEW {table} AS "
                        f"SELECT * FROM {current} c ANTI JOIN {recent} r USING ({keys}) UNION ALL "
                        f"SELECT * FROM (SELECT * FROM {current} c SEMI JOIN {recent} r USING ({keys}) "
                        f"UNION ALL SELECT * FROM {recent}) {latest}")
        con.execute(f"CREATE OR REPLACE VIEW {table}_history AS {_source(schema, parts.all, prefix)}")


def conform_to_schema(data: pa.Table, schema: pa.Schema, where: str,
                      stamp: tuple[str, datetime] | None = None) -> pa.Table:
    """`data`'s rows in `schema`: each column cast to its type; a missing column NULL, or, for the
    `stamp` (column, time), that time. CatalogError naming `where` and the column when values do not fit."""
    columns = []
    for field in schema:
        if field.name in data.column_names:
            try:
                columns.append(data.column(field.name).cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise CatalogError(f"{where}: column {field.name} does not fit {field.type} ({exc})") from None
        elif stamp is not None and field.name == stamp[0]:
            columns.append(pa.array([stamp[1]] * data.num_rows, type=field.type))
        else:
            columns.append(pa.nulls(data.num_rows, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


class Catalog:
    """Append rows as immutable Parquet files; query them through DuckDB views."""

    def __init__(self, catalog_dir: Path) -> None:
        self.dir = Path(catalog_dir)

    def append(self, table: str, rows: Sequence[Mapping[str, object]], name: str | None = None) -> Path:
        """Write rows as one new Parquet file of `table`; returns its path.

        `name` (optional, no extension) makes the file deterministic, so a retried write of the same
        batch replaces its own file instead of adding a duplicate.
        """
        if table not in TABLES:
            raise CatalogError(f"unknown catalog table {table!r}; known: {', '.join(TABLES)}")
        schema = TABLES[table]
        known = set(schema.names)
        now = datetime.now(UTC)
        filled = []
        for i, row in enumerate(rows):
            unknown = set(row) - known
            if unknown:
                raise CatalogError(f"{table} row {i}: unknown column(s) {sorted(unknown)}; known: {schema.names}")
            filled.append({**row, _STAMP[table]: row.get(_STAMP[table]) or now})
        try:
            data = pa.Table.from_pylist(filled, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise CatalogError(f"{table}: rows do not fit the table's columns: {exc}") from exc
        return self._write(table, data, name, now)

    def append_table(self, table: str, data: pa.Table, name: str | None = None) -> Path:
        """Write an Arrow table as one new Parquet file of `table` (for large batches: no row dicts).

        Its columns must be a subset of the table's; missing ones are NULL, a missing timestamp is now.
        """
        if table not in TABLES:
            raise CatalogError(f"unknown catalog table {table!r}; known: {', '.join(TABLES)}")
        schema = TABLES[table]
        unknown = set(data.column_names) - set(schema.names)
        if unknown:
            raise CatalogError(f"{table}: unknown column(s) {sorted(unknown)}; known: {schema.names}")
        now = datetime.now(UTC)
        return self._write(table, conform_to_schema(data, schema, table, stamp=(_STAMP[table], now)), name, now)

    def _write(self, table: str, data: pa.Table, name: str | None, now: datetime) -> Path:
        folder = self.dir / table
        folder.mkdir(parents=True, exist_ok=True)
        stem = name or f"{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:12]}"
        if "/" in stem or stem.startswith("."):
            raise CatalogError(f"bad file name {stem!r} for table {table}")
        target = folder / f"{stem}.parquet"
        tmp = folder / f".{stem}.{os.getpid()}.tmp"  # the view's *.parquet glob never sees it
        pq.write_table(data, tmp)
        os.replace(tmp, target)
        return target

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with the catalog views (full access: for our own code only)."""
        con = duckdb.connect(":memory:")
        _create_views(con, self.dir)
        return con

    def query(self, sql: str, params: Sequence[object] | Mapping[str, object] | None = None) -> list[dict]:
        """Run SQL over the views; rows as dicts."""
        con = self.connect()
        try:
            cursor = con.execute(sql, params) if params is not None else con.execute(sql)
            columns = [d[0] for d in cursor.description or []]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        finally:
            con.close()


def _check_single_select(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlRejected(f"cannot parse the query: {exc}") from None
    if len(statements) != 1:
        raise SqlRejected(f"exactly one statement is allowed, got {len(statements)}")
    kind = statements[0].type
    if kind == duckdb.StatementType.MULTI and _says_pivot(sql):
        raise SqlRejected("a PIVOT without an IN list runs as several statements (DuckDB first looks up the "
                          "values to make columns of), and only one SELECT is allowed: list the values, e.g. "
                          "PIVOT lesions ON split IN ('train', 'test') USING count(*) GROUP BY collection")
    if kind != duckdb.StatementType.SELECT:
        raise SqlRejected(f"only SELECT queries are allowed, this is a {kind.name} statement; the catalog is read-only")


def without_closing_semicolon(sql: str) -> str:
    """One statement's text without its closing `;` and the comments after it: a relation built on
    it (a LIMIT, a projection) wraps it in a subquery, where `SELECT 1; -- why` does not parse."""
    try:
        tokens = [start for start, kind in token_starts(sql) if kind != duckdb.token_type.comment]
    except duckdb.Error:
        return sql
    return sql[:tokens[-1]] if tokens and sql[tokens[-1]] == ";" else sql


def _says_pivot(sql: str) -> bool:
    """Whether the statement uses the PIVOT keyword (not in a string, comment or name)."""
    try:
        tokens = token_starts(sql)
    except duckdb.Error:
        return False
    return any(kind == duckdb.token_type.keyword and sql[start:start + 5].lower() == "pivot"
               and not sql[start + 5:start + 6].isalnum() for start, kind in tokens)


ANALYST_MEMORY_LIMIT = "2GB"  # DuckDB's memory for one analyst connection (lock_down)


def lock_down(con: duckdb.DuckDBPyConnection, catalog_dir: Path, prefix: str = "") -> None:
    """The analyst guard's settings: read files under catalog_dir only (named with `prefix`, as the
    views name them), no other external access, bounded memory, and the configuration frozen so a
    query cannot undo it."""
    # Order matters: restrict first, then turn external access off, then freeze the settings.
    # DuckDB adds its temporary (spill) directory, <cwd>/.tmp by default, to the allowed ones:
    # no spilling, so that no folder but the catalog's can be read.
    con.execute("SET temp_directory=''")
    con.execute(f"SET allowed_directories=[{_sql_literal(prefix + str(catalog_dir))}]")
    con.execute("SET enable_external_access=false")
    con.execute(f"SET memory_limit='{ANALYST_MEMORY_LIMIT}'")
    # The catalog's times are UTC (docs/CATALOG.md), and once locked nobody can change the zone:
    # show them in UTC, not in the zone of whatever machine runs the query (GLOBAL: also in the
    # cursors run_readonly_sql takes).
    con.execute("SET GLOBAL TimeZone='UTC'")
    con.execute("SET lock_configuration=true")


# Guarded databases with the views already created, by catalog folder: building the views reads
# every file's schema, which costs more than a typical query. One is reused while the list of live
# files is the same: the views are exactly the ones a fresh build would make (a file rewritten under
# its own name keeps its schema, and rows are read at query time).
_GUARDED: dict[Path, tuple[tuple, duckdb.DuckDBPyConnection]] = {}
_GUARDED_LOCK = threading.Lock()
_GUARDED_MAX = 4


def _live_signature(catalog_dir: Path) -> tuple:
    return tuple((table, tuple(live_files(catalog_dir / table)) if (catalog_dir / table).is_dir() else ())
                 for table in TABLES)


def _guarded_database(catalog_dir: Path) -> duckdb.DuckDBPyConnection:
    """The locked-down in-memory database with the catalog views, rebuilt when files changed."""
    signature = _live_signature(catalog_dir)
    with _GUARDED_LOCK:
        cached = _GUARDED.get(catalog_dir)
        if cached is not None and cached[0] == signature:
            return cached[1]
        con = duckdb.connect(":memory:")
        _create_views(con, catalog_dir)
        lock_down(con, catalog_dir)
        # A replaced database is not closed here: a query in another thread may still be using it.
        _GUARDED.pop(catalog_dir, None)
        while len(_GUARDED) >= _GUARDED_MAX:
            _GUARDED.pop(next(iter(_GUARDED)))
        _GUARDED[catalog_dir] = (signature, con)
        return con


def run_readonly_sql(catalog_dir: Path, sql: str, max_rows: int = 10_000, timeout_s: float = 10.0,
                     check_row: Callable[[tuple], None] | None = None) -> SqlResult:
    """Run one analyst SELECT over the catalog views: no writes, no files outside the catalog,
    at most max_rows rows, interrupted after timeout_s. Raises SqlRejected with the reason.
    `check_row` sees each row as it is read and may raise to stop reading (POST /sql's byte cap)."""
    catalog_dir = Path(catalog_dir).resolve()
    con = _guarded_database(catalog_dir).cursor()  # a cursor: its own query state, the shared views
    try:
        from dermground.platform.analyst import writable_columns  # analyst imports this module

        with guarded_select(con, sql, catalog_dir, timeout_s):
            cursor = con.execute(sql)
            columns = [d[0] for d in cursor.description or []]
            if any(d[1].id == "interval" for d in cursor.description or []):
                # An INTERVAL column as DuckDB writes it, as `--out` files have it: a Python
                # timedelta has no months (DuckDB makes each 30 days) and prints -1 s as
                # '-1 day, 23:59:59'. Such a query runs again (binding a wrapped query costs as
                # much as running it on an uncompacted catalog: the others do not pay for it).
                cursor.abort()  # the connection takes no other statement while a result is pending
                relation = writable_columns(con.sql(without_closing_semicolon(sql)), ".json")
                # A relation keeps no result to fetch from in parts: its rows are checked once read.
                rows = relation.limit(max_rows + 1).fetchall()
                for row in rows if check_row is not None else ():
                    check_row(row)
            else:
                rows = _fetch_rows(cursor, max_rows + 1, check_row)
        return SqlResult(columns, [tuple(r) for r in rows[:max_rows]], len(rows) > max_rows)
    finally:
        con.close()


def _fetch_rows(source: duckdb.DuckDBPyConnection, count: int,
                check_row: Callable[[tuple], None] | None) -> list:
    """Up to `count` rows of a pending result; with `check_row`, read in batches and checked as they
    come, so that a refusal stops reading before the whole result is held."""
    if check_row is None:
        return source.fetchmany(count)
    rows: list = []
    while len(rows) < count:
        batch = source.fetchmany(min(_FETCH_BATCH, count - len(rows)))
        if not batch:
            break
        for row in batch:
            check_row(row)
        rows.extend(batch)
    return rows


_FETCH_BATCH = 256
_INTERRUPTED = "the query was interrupted (Ctrl-C)"


@contextmanager
def _ctrl_c_interrupts(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """In the main thread (the CLI), Ctrl-C stops the running query at once: DuckDB's client looks
    at signals only now and then (20 s and more for a scan), so a watcher thread learns of SIGINT
    from the wake-up fd and interrupts the query, and the Python handler does nothing meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if select.select([read_fd], [], [], 0.1)[0] and signal.SIGINT in os.read(read_fd, 64):
                con.interrupt()

    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous_handler = signal.signal(signal.SIGINT, lambda *_: None)
    watcher = threading.Thread(target=watch, name="sql-ctrl-c", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous_handler)
        os.close(read_fd)
        os.close(write_fd)


@contextmanager
def guarded_select(con: duckdb.DuckDBPyConnection, sql: str, catalog_dir: Path, timeout_s: float) -> Iterator[None]:
    """Run the body (which executes `sql` on `con`) as one analyst SELECT: anything but a single
    SELECT is refused first, the query is interrupted after timeout_s, and DuckDB's errors become
    SqlRejected with the reason."""
    # lock_down() still allows COPY ... TO inside the folder: only a SELECT may run.
    _check_single_select(con, sql)
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        con.interrupt()

    timer = threading.Timer(timeout_s, stop)
    timer.start()
    try:
        with _ctrl_c_interrupts(con):
            yield
    except duckdb.InterruptException:
        if not timed_out.is_set():
            raise SqlFailed(_INTERRUPTED) from None
        raise SqlTimedOut(f"the query ran longer than {timeout_s:g} s and was stopped") from None
    except (KeyboardInterrupt, RuntimeError) as exc:
        # Ctrl-C while DuckDB runs the query: its Python client stops it and raises
        # RuntimeError('Query interrupted'); the shell goes on with the next statement.
        if isinstance(exc, RuntimeError) and "interrupted" not in str(exc).lower():
            raise
        raise SqlFailed(_INTERRUPTED) from None
    except duckdb.Error as exc:
        if not timer.is_alive():
            raise SqlTimedOut(f"the query ran longer than {timeout_s:g} s and was stopped") from None
        if isinstance(exc, duckdb.OutOfMemoryException):
            # DuckDB's own advice (a temp_directory, more memory, fewer threads) cannot be taken:
            # lock_down froze the settings.
            raise SqlFailed(f"the query needed more memory than an analyst's query has ({ANALYST_MEMORY_LIMIT}, "
                            "without spilling to disk; the settings are fixed): aggregate or filter in the query "
                            "(GROUP BY, WHERE) or select fewer columns, so that less is held at once") from None
        if isinstance(exc, duckdb.PermissionException):
            raise SqlRejected("the query tried to use a file outside the catalog folder; only the catalog "
                              f"views (and files under {catalog_dir}) can be read: {exc}") from None
        raise SqlFailed(f"query failed: {exc}") from None
    finally:
        timer.cancel()
