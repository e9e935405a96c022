"""`dermground collections list|info|switch|drop`: the versions behind each collection name."""

from __future__ import annotations

import json

import click

from dermground.platform.commands.context import collection_name, current_settings
from dermground.platform.next_step import next_command


def _open():  # noqa: ANN202 - Collections, imported lazily
    from dermground.platform.store import StoreError, open_collections

    try:
        return open_collections(current_settings())
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def _line(info) -> str:  # noqa: ANN001 - VersionInfo
    from dermground.platform.store.snapshots import human_bytes

    points = "?" if info.points is None else str(info.points)
    size = "" if info.size_bytes is None else f", {human_bytes(info.size_bytes)} on disk"
    model = info.spec.fingerprint if info.spec else "no collection yet"
    note = f" [{info.note}]" if info.note else ""
    return (f"{'*' if info.live else ' '} {info.name} {info.version} ({info.physical}): {points} points, "
            f"{info.meta.state}, model {model}, adapter {info.meta.adapter or 'none'}, "
            f"created {info.meta.created_at or '?'}{size}{note}")


@click.group("collections")
def collections() -> None:
    """Versions of each collection: a name points at one live version (marked *)."""


@collections.command("list")
@click.argument("name", required=False, callback=collection_name)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(name: str | None, as_json: bool) -> None:
    """Every version of every collection (or of NAME)."""
    from dermground.platform.store import StoreError

    with _open() as cols:
        try:
            infos = cols.list(name)
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    if not infos:
        what = f"no collection {name!r} yet" if name else "no collections yet"
        create = next_command(f"ingest --data DIR --collection {name or current_settings().collection}")
        click.echo(f"{what}; create one with `{create}`")
    for info in infos:
        click.echo(_line(info))


@collections.command("info")
@click.argument("name", callback=collection_name)
@click.argument("version", required=False)
def info(name: str, version: str | None) -> None:
    """One version of NAME in detail [default: the live one]."""
    from dermground.platform.store import StoreError

    with _open() as cols:
        try:
            version = version or cols.live_version(name)
            if version is None:
                raise click.ClickException(f"no collection {name!r}; see `{next_command('collections list')}`")
            click.echo(json.dumps(cols.info(name, version).to_dict(), indent=2))
        except (StoreError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None


@collections.command("switch")
@click.argument("name", callback=collection_name)
@click.argument("version")
def switch(name: str, version: str) -> None:
    """Point NAME at VERSION in one atomic step (a running API follows without a restart)."""
    from dermground.platform.collection_ops import switch_collection
    from dermground.platform.store import StoreError

    try:
        before = switch_collection(current_settings(), name, version)
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    kept = (f"; {before} is kept until `{next_command(f'collections drop {name} {before}')}`"
            if before and before != version else "")
    click.echo(f"{name} -> {version} (was {before or 'nothing'}){kept}")


@collections.command("drop")
@click.argument("name", callback=collection_name)
@click.argument("version")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--builder-gone", is_flag=True,
              help="On a Qdrant server: drop a version still marked 'building' by a process on another host, "
                   "which you know has stopped.")
def drop(name: str, version: str, yes: bool, builder_gone: bool) -> None:
    """Delete VERSION of NAME for good (never the live one)."""
    from dermground.platform.store import StoreError

    with _open() as cols:
        try:
            found = cols.info(name, version)
            if found.live:
                cols.drop(name, version)  # refuses with the next step
            if not yes:
                click.confirm(f"Delete {_line(found).strip()}?", abort=True)
            cols.drop(name, version, builder_gone=builder_gone)
        except (StoreError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    _record_drop(name, version)
    click.echo(f"dropped {name} {version}")


def _record_drop(name: str, version: str) -> None:
    """Mark the dropped version in the catalog (the `collections` view's dropped_at), once it is gone
    from the store; its catalog rows stay as its history. A catalog that cannot be written is named,
    the drop itself stands."""
    from dermground.platform.catalog import Catalog, CatalogError
    from dermground.platform.store.versions import physical_name

    try:
        Catalog(current_settings().catalog_dir).append(
            "collection_drops", [{"collection": physical_name(name, version), "name": name, "version": version}])
    except (OSError, CatalogError) as exc:
        click.echo(f"warning: {name} {version} was dropped, but the catalog could not record it ({exc}): the "
                   "`collections` view still shows it without dropped_at.", err=True)
