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
