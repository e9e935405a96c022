"""`dermground catalog ...`: the data dictionary and maintenance of the catalog folder."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("catalog")
def catalog() -> None:
    """The catalog's data dictionary and maintenance (query it with `dermground sql`)."""


@catalog.command("dictionary")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the Markdown here (the repository keeps it in docs/CATALOG.md) instead of printing it.")
def dictionary_command(out: Path | None) -> None:
    """Every view and column with type, unit and meaning, as Markdown.

    Regenerate the committed copy with: dermground catalog dictionary --out docs/CATALOG.md
    """
    from dermground.platform.catalog_dictionary import dictionary, render_markdown, undescribed

    views = dictionary()
    text = render_markdown(views)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {len(views)} views to {out}", err=True)
    missing = undescribed(views)
    if missing:
        click.echo(f"warning: no description for {', '.join(missing)} (platform/catalog_dictionary.py)", err=True)


@catalog.command("compact")
@click.option("--table", "tables", multiple=True, help="Compact only this table (repeatable) [default: all].")
@click.option("--keep-minutes", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Superseded files stay this long for readers that listed them before the swap; a later "
                   "compact deletes them.")
def compact_command(tables: tuple[str, ...], keep_minutes: float) -> None:
    """Merge each table's small Parquet files into one (safe while ingest, the API and analysts run).

    Ingest writes one file per partition (256 lesions), so a large catalog holds thousands of small
    files and every query opens them all. The merged file is verified, then one atomic manifest swap
    makes it live; superseded files are deleted by a later compact after --keep-minutes.
    """
    from dermground.platform.catalog import CatalogError
    from dermground.platform.catalog_compact import CompactionBusy, compact
    from dermground.platform.commands.context import current_settings

    catalog_dir = current_settings().catalog_dir
    try:
        summary = compact(catalog_dir, tables=list(tables) or None, keep_s=keep_minutes * 60)
    except (CatalogError, CompactionBusy) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"compacted {catalog_dir}: {summary}")
