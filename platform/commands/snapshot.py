"""`dermground snapshot create|list|restore`: back up and restore a collection."""

from __future__ import annotations

from pathlib import Path

import click

from dermground.platform.commands.context import collection_name, current_settings, from_settings


def _snapshot_dir(collection: str) -> Path:
    from dermground.platform.names import check_collection_name

    return current_settings().home / "snapshots" / check_collection_name(collection)


def _open(collection: str):  # noqa: ANN202 - VectorStore, imported lazily
    from dermground.platform.store import StoreError, StoreLockedError, open_store

    try:
        return open_store(current_settings(), collection)
    except StoreLockedError as exc:
        raise click.ClickException(str(exc)) from None
    except StoreError as exc:
        raise click.ClickException(f"{exc}\nCheck the collection name with `dermground check`.") from None


@click.group("snapshot")
def snapshot() -> None:
    """Back up and restore a collection (embedded: a tar under HOME/snapshots; server: native)."""


@snapshot.command("create")
@click.option("--collection", callback=collection_name,
              default=from_settings("collection"), show_default="DERMGROUND_COLLECTION")
def create(collection: str) -> None:
    """Write a snapshot of the collection and print where it is."""
    from dermground.platform.store import StoreError

    with _open(collection) as store:
        try:
            where = store.snapshot(_snapshot_dir(collection))
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"snapshot of {collection!r}: {where}")


@snapshot.command("list")
@click.option("--collection", callback=collection_name,
              default=from_settings("collection"), show_default="DERMGROUND_COLLECTION")
def list_(collection: str) -> None:
    """List the collection's snapshots, newest last."""
    if current_settings().qdrant_url:
        with _open(collection) as store:
            names = store.list_snapshots()  # type: ignore[attr-defined]
    else:
        folder = _snapshot_dir(collection)
        names = sorted(str(p) for p in folder.glob("*.tar")) if folder.is_dir() else []
    if not names:
        click.echo(f"no snapshots of {collection!r}; make one with `dermground snapshot create`")
    for name in names:
        click.echo(name)


@snapshot.command("restore")
@click.argument("snapshot_ref")
@click.option("--collection", callback=collection_name,
              default=from_settings("collection"), show_default="DERMGROUND_COLLECTION")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def restore(snapshot_ref: str, collection: str, yes: bool) -> None:
    """Replace the collection's contents with SNAPSHOT_REF (a path, or a server snapshot name)."""
    from dermground.platform.store import StoreError

    if not current_settings().qdrant_url and not Path(snapshot_ref).is_file():
        raise click.ClickException(f"no snapshot file {snapshot_ref}; see `dermground snapshot list`")
    if not yes:
        click.confirm(f"Replace every point of {collection!r} with {snapshot_ref}?", abort=True)
    with _open(collection) as store:
        try:
            store.restore(Path(snapshot_ref))
            count = store.count()
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"restored {collection!r} from {snapshot_ref}: {count} points")
