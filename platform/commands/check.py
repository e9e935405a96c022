"""`dermground check`: prove the vector store and the catalog agree about a collection."""

from __future__ import annotations

import click

from dermground.platform.commands.context import collection_name, current_settings, from_settings, with_qdrant_url


@click.command("check")
@click.option("--collection", callback=collection_name,
              default=from_settings("collection"), show_default="DERMGROUND_COLLECTION",
              help="Collection to check.")
@click.option("--qdrant-url", default=None,
              help="Qdrant server URL [default: DERMGROUND_QDRANT_URL, else the embedded store under HOME].")
def check(collection: str, qdrant_url: str | None) -> None:
    """Compare store and catalog: missing, phantom or duplicate ids, points missing a named
    vector or payload key, ledger partitions, counts. Exits 1 on any finding. While `serve` holds
    the live version of the embedded store, a copy of it is checked."""
    from dermground.ingest.consistency import check_collection
    from dermground.platform.store import StoreError

    settings = with_qdrant_url(current_settings(), qdrant_url)
    try:
        report = check_collection(settings, collection)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    if report.unknown_collection:
        from dermground.platform.next_step import next_command

        raise click.ClickException(f"no collection {collection!r} in the store or the catalog: check the name "
                                   f"(`{next_command('collections list')}` shows the collections)")
    click.echo(f"collection {collection}: store {report.store_points} points, catalog {report.catalog_rows} rows, "
               f"ledger {report.ledger_partitions} partitions / {report.ledger_points} points")
    for finding in report.findings:
        click.echo(f"FINDING {finding}")
    if not report.ok:
        click.echo(f"{len(report.findings)} finding(s). If an ingest was interrupted, rerun it to resume; "
                   "then check again.", err=True)
        raise SystemExit(1)
    click.echo("ok: store and catalog agree")
