"""`dermground snapshot create|list|restore`: back up a collection version and restore it safely.

The same on every backend: a snapshot is a tar of the version's points and catalog rows under
HOME/snapshots/<name>/ (platform/store/snapshots.py). A restore is verified in full, loaded into a
new version and switched to; the replaced version stays until `dermground collections drop`.
"""

from __future__ import annotations

from pathlib import Path

import click

from dermground.platform.commands.context import collection_name, current_settings, from_settings
from dermground.platform.next_step import next_command


@click.group("snapshot")
def snapshot() -> None:
    """Back up and restore a collection (a portable tar under HOME/snapshots/NAME)."""


@snapshot.command("create")
@click.option("--collection", callback=collection_name,
              default=from_settings("collection"), show_default="DERMGROUND_COLLECTION",
              help="The collection to back up (its live version unless --version).")
@click.option("--version", default=None, help="Version to back up (v1, v2, ...) [default: the live one].")
def create(collection: str, version: str | None) -> None:
    """Write a snapshot of the collection's points and catalog rows and print where it is."""
    from dermground.platform.collection_ops import create_snapshot
    from dermground.platform.store import StoreError
    from dermground.platform.store.snapshots import human_bytes

    try:
        where = create_snapshot(current_settings(), collection, version,
                                progress=lambda n: click.echo(f"  {n} points exported", err=True))
    except (StoreError, ValueError) as exc:  # ValueError: a --version that is not v<number>
        raise click.ClickException(str(exc)) from None
    click.echo(f"snapshot of {collection!r}: {where} ({human_bytes(where.stat().st_size)})")


@snapshot.command("list")
@click.option("--collection", callback=collection_name,
              default=from_settings("collection"), show_default="DERMGROUND_COLLECTION",
              help="The collection whose snapshots to list.")
def list_(collection: str) -> None:
    """List the collection's snapshots, oldest first."""
    from dermground.platform.collection_ops import snapshot_dir

    folder = snapshot_dir(current_settings(), collection)
    names = sorted((p for p in folder.glob("*.tar")), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not names:
        click.echo(f"no snapshots of {collection!r}; make one with "
                   f"`{next_command(f'snapshot create --collection {collection}')}`")
    for path in names:
        click.echo(str(path))


@snapshot.command("restore")
@click.argument("snapshot_file", type=click.Path(path_type=Path))
@click.option("--collection", callback=collection_name, default=None, show_default="DERMGROUND_COLLECTION",
              help="The collection to restore into; needed when the snapshot is of another collection.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def restore(snapshot_file: Path, collection: str | None, yes: bool) -> None:
    """Restore SNAPSHOT_FILE into a new version of the collection and switch to it.

    The snapshot is verified in full first; a damaged one is refused and nothing changes.
    """
    from dermground.platform.collection_ops import plan_restore, restore_snapshot
    from dermground.platform.store import StoreError

    settings = current_settings()
    if not snapshot_file.is_file():
        listed = next_command(f"snapshot list --collection {collection}" if collection else "snapshot list")
        raise click.ClickException(f"no snapshot file {snapshot_file}; see `{listed}`")
    chosen = collection is not None
    collection = collection if chosen else settings.collection
    try:
        plan = plan_restore(settings, collection, snapshot_file)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    confirmed = False
    try:
        source = plan.source_name()
        if not chosen and source is not None and source != collection:
            # Only the default named the target: never put another collection's backup in its place unasked.
            raise click.ClickException(
                f"{snapshot_file.name} is a snapshot of {source!r}, not of the default collection {collection!r}: "
                f"pass --collection {source} to restore it as itself, or --collection {collection} to restore it "
                f"in place of {collection!r}")
        click.echo(plan.describe())
        confirmed = yes or click.confirm("Restore it into a new version and switch to it?")
    finally:
        if not confirmed:  # "no", Ctrl-C or no input: the unpacked copy goes too
            plan.snapshot.cleanup()
    if not confirmed:
        raise click.Abort()
    try:
        result = restore_snapshot(settings, plan, progress=lambda n: click.echo(f"  {n} points loaded", err=True))
    except StoreError as exc:
        raise click.ClickException(f"{exc}\nThe live version was not switched.") from None
    replaced = (f"; {result.replaced} stays until `{next_command(f'collections drop {collection} {result.replaced}')}`"
                if result.replaced else "")
    click.echo(f"restored {collection!r} from {snapshot_file}: {result.points} points, {result.catalog_rows} catalog "
               f"rows, version {result.version} is live{replaced}")
