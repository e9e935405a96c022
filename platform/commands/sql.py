"""`dermground sql "SELECT ..."`: read-only SQL over the catalog (lesions, predictions, ledger, ...)."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime

import click

from dermground.platform.commands.context import current_settings, from_settings


def _cell(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _table(columns: list[str], rows: list[tuple]) -> str:
    text = [[("NULL" if v is None else str(_cell(v))) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in text]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in text]
    return "\n".join(line.rstrip() for line in lines)


@click.command("sql")
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="Output format.")
@click.option("--max-rows", type=click.IntRange(min=1), default=from_settings("sql_max_rows"),
              help="Stop after this many rows [default: DERMGROUND_SQL_MAX_ROWS].")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.01), default=from_settings("sql_timeout_s"),
              help="Stop the query after this many seconds [default: DERMGROUND_SQL_TIMEOUT_S].")
def sql(query: str, fmt: str, max_rows: int, timeout_s: float) -> None:
    """Run one read-only SELECT over the catalog.

    Views: lesions, lesions_history, predictions, ingest_runs, ingest_runs_history,
    ingest_partitions, quarantine, evaluations. Writes, ATTACH, COPY, INSTALL and files outside
    the catalog folder are refused.

    Example: dermground sql "SELECT split, count(*) FROM lesions GROUP BY split"
    """
    from dermground.platform.catalog import SqlRejected, run_readonly_sql

    catalog_dir = current_settings().catalog_dir
    try:
        result = run_readonly_sql(catalog_dir, query, max_rows=max_rows, timeout_s=timeout_s)
    except SqlRejected as exc:
        raise click.ClickException(f"{exc}\nOnly one SELECT over the catalog views is allowed "
                                   "(see `dermground sql --help`).") from None
    if fmt == "json":
        records = [{c: _cell(v) for c, v in zip(result.columns, row, strict=True)} for row in result.rows]
        click.echo(json.dumps(records, indent=2, default=str))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows([[_cell(v) for v in row] for row in result.rows])
        click.echo(buffer.getvalue(), nl=False)
    else:
        click.echo(_table(result.columns, result.rows))
    if result.truncated:
        click.echo(f"(stopped at {max_rows} rows; raise --max-rows or add LIMIT/WHERE)", err=True)
