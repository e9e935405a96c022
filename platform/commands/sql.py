"""`dermground sql "SELECT ..."`: read-only SQL over the catalog (lesions, predictions, ledger, ...).

Without a query: an interactive shell (platform/sql_shell.py). `--out FILE` writes the whole
result as Parquet, CSV or JSON lines; `--schema` prints the data dictionary.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timedelta
from pathlib import Path

import click

from dermground.platform.commands.context import current_settings, from_settings


def _cell(value: object) -> object:
    if isinstance(value, bool | bytes | bytearray | memoryview):  # true / false, a BLOB as DuckDB writes it
        from dermground.platform.sql_text import scalar_text

        return scalar_text(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):  # inside a list or struct: top-level intervals come as DuckDB's text
        from dermground.platform.analyst import interval_text

        return interval_text(value)
    if isinstance(value, list | tuple | dict):  # as the JSON outputs write it, not Python's repr
        from dermground.platform.analyst import json_default, json_value

        return json.dumps(json_value(value), default=json_default)
    return value


def _csv_cell(value: object) -> object:
    """A CSV field: a list, struct or map as JSON text, as `--out FILE.csv` writes it (Python's
    repr, {'a': 1}, is no format a reader parses)."""
    if isinstance(value, list | tuple | dict):
        from dermground.platform.analyst import json_default, json_value

        return json.dumps(json_value(value), default=json_default)
    return _cell(value)


def _table(columns: list[str], rows: list[tuple]) -> str:
    from dermground.platform.sql_text import display_width, table_text

    # One line per row, padded by terminal columns: a line break in a value, a wide (CJK) or
    # combining character in an id broke the grid.
    cells = [[table_text(c) for c in columns]]
    cells += [[("NULL" if v is None else table_text(str(_cell(v)))) for v in row] for row in rows]
    spans = [[display_width(v) for v in row] for row in cells]
    widths = [max(row[i] for row in spans) for i in range(len(columns))]
    lines = ["  ".join(v + " " * (w - n) for v, n, w in zip(row, used, widths, strict=True))
             for row, used in zip(cells, spans, strict=True)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


@click.command("sql")
@click.argument("query", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="Output format.")
@click.option("--max-rows", type=click.IntRange(min=1), default=None,
              help="Stop after this many rows [default: DERMGROUND_SQL_MAX_ROWS; with --out: all rows].")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.01), default=from_settings("sql_timeout_s"),
              help="Stop the query after this many seconds [default: DERMGROUND_SQL_TIMEOUT_S].")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result to FILE.parquet, FILE.csv or FILE.json (JSON lines) instead of printing it. "
                   "JSON writes NaN and infinities as null; times are ISO 8601 text in CSV and JSON and intervals "
                   "text as DuckDB writes them ('1 month 2 days 03:00:00'), as --format prints them; CSV writes "
                   "lists, structs and maps as JSON text. Booleans are true/false, BLOBs as DuckDB writes "
                   "them (ab\\x00c) in every text output.")
@click.option("--schema", "schema", is_flag=True,
              help="Print every view and column with type, unit and meaning (the data dictionary) and exit.")
def sql(query: str | None, fmt: str, max_rows: int | None, timeout_s: float, out: Path | None, schema: bool) -> None:
    """Run one read-only SELECT over the catalog; without QUERY, open an interactive shell.

    Views: lesions, predictions, prediction_errors, retrieval_hits, attributes_long, collections,
    collection_versions, ingest_runs, ingest_partitions, quarantine, evaluations, attributes (and
    lesions_history, ingest_runs_history); `--schema` describes every column. Writes, ATTACH,
    COPY, INSTALL and files outside the catalog folder are refused.

    \b
    Examples:
      dermground sql "SELECT split, count(*) FROM lesions GROUP BY split"
      dermground sql "SELECT * FROM prediction_errors WHERE run_id = 'eval-predict-...'" --out errors.parquet
      dermground sql                      # shell: statements end with ';', .help for commands
      dermground sql < queries.sql        # run a file of statements
    """
    from dermground.platform.catalog import SqlRejected, run_readonly_sql

    settings = current_settings()
    catalog_dir = settings.catalog_dir
    if schema:
        from dermground.platform.catalog_dictionary import dictionary, render_text

        click.echo(render_text(dictionary()), nl=False)
        return
    if query is None:
        if out is not None:
            raise click.UsageError("--out needs a QUERY")
        _shell(catalog_dir, fmt, max_rows or settings.sql_max_rows, timeout_s, settings.home)
        return
    if out is not None:
        _write_out(catalog_dir, query, out, max_rows, timeout_s)
        return
    max_rows = max_rows or settings.sql_max_rows
    try:
        result = run_readonly_sql(catalog_dir, query, max_rows=max_rows, timeout_s=timeout_s)
    except SqlRejected as exc:
        raise _sql_error(exc) from None
    click.echo(_render(result.columns, result.rows, fmt), nl=fmt != "csv")
    if result.truncated:
        click.echo(f"(stopped at {max_rows} rows; raise --max-rows or add LIMIT/WHERE)", err=True)


def _sql_error(exc: Exception) -> click.ClickException:
    """The CLI's error for a refused or failed query, with the next step that fits it: a query
    that failed was one SELECT, so the rule about one SELECT is no help there."""
    from dermground.platform.catalog import SqlFailed, SqlTimedOut

    if isinstance(exc, SqlTimedOut):
        hint = "Raise --timeout, or narrow the query (WHERE, LIMIT)."
    elif isinstance(exc, SqlFailed):
        hint = "(`dermground sql --schema` lists every view and column.)" if str(exc).startswith("query failed") else ""
    else:
        hint = "Only one SELECT over the catalog views is allowed (see `dermground sql --help`)."
    return click.ClickException(f"{exc}\n{hint}".rstrip())


def _render(columns: list[str], rows: list[tuple], fmt: str) -> str:
    if fmt == "json":
        from dermground.platform.analyst import json_default, json_value, unique_names

        names = unique_names(columns)
        records = [{c: json_value(v) for c, v in zip(names, row, strict=True)} for row in rows]
        return json.dumps(records, indent=2, default=json_default, allow_nan=False)
    if fmt == "csv":
        # Python's writer quotes a field holding a character of its line terminator: with "\n" a
        # carriage return in a value went out bare and split the row for every CSV reader. It
        # writes each row ended by "\r\n", which then becomes the "\n" --out x.csv ends rows with.
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        lines = []
        for row in [columns, *([_csv_cell(v) for v in row] for row in rows)]:
            buffer.seek(0)
            buffer.truncate()
            writer.writerow(row)
            lines.append(buffer.getvalue()[:-2] + "\n")
        return "".join(lines)
    return _table(columns, rows)


def _write_out(catalog_dir: Path, query: str, out: Path, max_rows: int | None, timeout_s: float) -> None:
    from dermground.platform.analyst import OUT_FORMATS, query_arrow, refuse_out_in_catalog, write_table
    from dermground.platform.catalog import SqlRejected

    if out.suffix.lower() not in OUT_FORMATS:
        raise click.BadParameter(f"{out}: use a .parquet, .csv or .json file name", param_hint="--out")
    try:
        refuse_out_in_catalog(catalog_dir, out)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--out") from None
    from dermground.platform.out_folder import OutFolderError, require_writable_folder

    try:  # before the query, which may run for minutes
        require_writable_folder(out.parent, flag=f"the folder of --out {out},")
    except OutFolderError as exc:
        raise click.BadParameter(str(exc), param_hint="--out") from None
    try:
        # One row past the limit tells a result cut short from one that fits exactly.
        table = query_arrow(catalog_dir, query, timeout_s=timeout_s, max_rows=None if max_rows is None else max_rows + 1,
                            out_format=out.suffix.lower())
    except SqlRejected as exc:
        raise _sql_error(exc) from None
    truncated = max_rows is not None and table.num_rows > max_rows
    if truncated:
        table = table.slice(0, max_rows)
    try:
        write_table(table, out)
    except OSError as exc:  # a full disk, a folder gone read-only since the check
        raise click.ClickException(f"could not write --out {out} ({exc.strerror or exc}); a file that was there "
                                   "is unchanged: free space or pick another place, then run the query again") from None
    click.echo(f"wrote {table.num_rows} rows x {table.num_columns} columns to {out}", err=True)
    if truncated:
        click.echo(f"(stopped at {max_rows} rows; the query has more: raise --max-rows or add LIMIT/WHERE)", err=True)


def _shell(catalog_dir: Path, fmt: str, max_rows: int, timeout_s: float, home: Path) -> None:
    import sys

    from dermground.platform import sql_shell
    from dermground.platform.catalog import SqlRejected, run_readonly_sql
    from dermground.platform.catalog_dictionary import dictionary, render_text

    def execute(statement: str) -> str:
        try:
            result = run_readonly_sql(catalog_dir, statement, max_rows=max_rows, timeout_s=timeout_s)
        except SqlRejected as exc:
            raise ValueError(str(exc)) from None
        except KeyboardInterrupt:  # Ctrl-C before DuckDB started the query: the shell goes on, as psql does
            raise ValueError("the query was interrupted (Ctrl-C)") from None
        text = _render(result.columns, result.rows, fmt).rstrip("\n")
        note = f"({len(result.rows)} row{'s' if len(result.rows) != 1 else ''}" + (
            f", stopped at {max_rows}; add LIMIT/WHERE)" if result.truncated else ")")
        return f"{text}\n{note}" if fmt == "table" else text

    def schema(view: str | None) -> str:
        views = dictionary()
        # Unquoted SQL names are case-insensitive: `.schema Lesions` is the view `FROM Lesions` reads.
        chosen = [v for v in views if view is None or v.name.lower() == view.lower()]
        if not chosen:
            raise ValueError(f"no view {view!r}; .tables lists them")
        return render_text(chosen).rstrip("\n")

    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"dermground sql over {catalog_dir} (read-only). Statements end with ';'. .help for commands.",
                   err=True)
        lines = sql_shell.terminal_lines(home / "sql_history")
    else:
        lines = iter(sys.stdin)
    status = sql_shell.run(sql_shell.statements(lines), execute=execute,
                           views=lambda: [v.name for v in dictionary()], schema=schema,
                           echo=click.echo, error=lambda m: click.echo(f"error: {m}", err=True),
                           stop_on_error=not interactive)
    if status:
        raise SystemExit(status)
