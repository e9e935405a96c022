"""`dermground serve`: the search API and the web viewer (uvicorn)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dermground.platform.commands.context import collection_name, current_settings, from_settings
from dermground.platform.next_step import next_command

if TYPE_CHECKING:
    from dermground.platform.settings import Settings
    from dermground.platform.store.live import LiveStore

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (nothing else can reach the server)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.option("--host", default=from_settings("api_host"), show_default="DERMGROUND_API_HOST",
              help="Address to bind; without DERMGROUND_API_READ_KEY only loopback is allowed.")
@click.option("--port", type=click.IntRange(1, 65535), default=from_settings("api_port"),
              show_default="DERMGROUND_API_PORT", help="Port to listen on.")
@click.option("--collection", callback=collection_name,
              default=from_settings("collection"), show_default="DERMGROUND_COLLECTION",
              help="Collection to search.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Base model folder [default: DERMGROUND_MODEL_DIR or HOME/models/base].")
@click.option("--adapter", "adapter_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="LoRA adapter folder the collection was ingested with [default: DERMGROUND_ADAPTER_DIR].")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="uvicorn log level.")
def serve(host: str, port: int, collection: str, model_dir: Path | None, adapter_dir: Path | None,
          log_level: str) -> None:
    """Serve the search API (OpenAPI docs at /docs) and the viewer at /.

    Clients send the read key (DERMGROUND_API_READ_KEY) as the X-API-Key header; /sql needs
    DERMGROUND_API_ADMIN_KEY. The model loads on the first request that needs it. The API follows
    `dermground collections switch` (and an ingest or restore that switches) without a restart;
    an ingest while it serves the embedded store writes a new version and switches to it. Started
    while an ingest writes the live version in place, it answers 503 until that ingest finishes (and
    while `snapshot create` or `check` reads it, until that lets go).
    """
    overrides: dict[str, object] = {"collection": collection}
    if model_dir is not None:
        overrides["model_dir"] = model_dir
    if adapter_dir is not None:
        overrides["adapter_dir"] = adapter_dir
    settings = current_settings().model_copy(update=overrides)
    if settings.api_read_key is None or not settings.api_read_key.get_secret_value():
        if not is_loopback(host):
            click.echo(f"No API key is set (DERMGROUND_API_READ_KEY), so the API binds to {LOOPBACK} instead of "
                       f"{host}: only this machine can reach it. Set DERMGROUND_API_READ_KEY (and "
                       "DERMGROUND_API_ADMIN_KEY for /sql) to serve other machines.", err=True)
            host = LOOPBACK
        else:
            click.echo("No API key is set: the read endpoints are open to this machine only.", err=True)
    from dermground.platform.model.adapter_fit import require_adapter_fits
    from dermground.platform.model.checkpoint_check import require_usable_checkpoint
    from dermground.platform.model.loading import BackboneError

    try:  # the model loads on the first request; a bad folder should stop us now, not then
        if settings.base_model_dir.exists():
            require_usable_checkpoint(settings.base_model_dir)
            if settings.adapter_dir is not None:  # an adapter of another base would fail every image search
                require_adapter_fits(settings.adapter_dir, settings.base_model_dir)
        else:  # a deployment may mount the model later; id searches and /sql work without it
            click.echo(f"No model at {settings.base_model_dir} yet: image searches and /predict will fail until one "
                       f"is there (`{next_command('model check DIR')}` checks a folder).", err=True)
    except BackboneError as exc:
        raise click.ClickException(f"{exc}\nPass --model DIR or set DERMGROUND_MODEL_DIR "
                                   f"(`{next_command('model check DIR')}` checks a folder).") from None
    from dermground.platform.store.serving_hold import local_url, serving_at

    with serving_at(local_url(host, port)):  # in the owner record: a `dermground search` refused points here
        _open_and_serve(settings, host, port, collection, log_level)


def _open_and_serve(settings: Settings, host: str, port: int, collection: str, log_level: str) -> None:
    """Open the live store and run uvicorn on it until it stops."""
    import uvicorn

    from dermground.platform.api import create_app
    from dermground.platform.store import StoreError, StoreLockedError

    try:
        # Opened here, so a held store stops us with a clear message; it follows `collections switch`.
        store = open_served_store(settings)
    except StoreLockedError as exc:
        raise click.ClickException(
            f"{exc}\n(One process at a time opens a version of the embedded store: a second `dermground serve` of a "
            "collection cannot start beside the first. An ingest, `check` or `snapshot create` does run beside a "
            "serve: it works on a copy.)") from None
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        if store.waiting is None and store.describe() is None:
            click.echo(f"Collection {collection!r} does not exist yet: searches will fail until "
                       f"`{next_command(f'ingest --data DIR --collection {collection}')}` fills it.", err=True)
        click.echo(f"Serving collection {collection!r} on http://{host}:{port}/ (API docs: /docs)", err=True)
        uvicorn.run(create_app(settings, store=store), host=host, port=port, log_level=log_level,
                    limit_concurrency=256, timeout_keep_alive=5)
    finally:
        store.close()


def open_served_store(settings: Settings) -> LiveStore:
    """The live store `serve` searches. While an ingest writes the live version of the embedded store
    in place (it holds the version's folder), or `snapshot create` or `check` reads it for a moment,
    the API starts anyway: it answers 503 naming the holder until the holder lets go, then serves the
    version without a restart (store/live.py). Another holder (another `serve`) is refused."""
    from dermground.ingest.collection_lock import collection_lock_holder
    from dermground.platform.store import StoreLockedError, open_collections
    from dermground.platform.store.live import LiveStore

    try:
        return LiveStore(open_collections(settings), settings.collection)
    except StoreLockedError:
        if settings.qdrant_url:
            raise
        ingest = collection_lock_holder(settings.home, settings.collection)
        with open_collections(settings) as collections:
            live = collections.live_version(settings.collection)
            owner = collections.holder(settings.collection, live) if live is not None else None
        if owner is None:  # let go meanwhile (a brief hold): open it now, or say who holds it
            return LiveStore(open_collections(settings), settings.collection)
        in_place = ingest is not None and owner.get("pid") == ingest.get("pid")
        if not in_place and not owner.get("brief"):
            raise  # another serve (an ingest then writes a copy), a restore, ...: say who, as before
    notify = lambda line: click.echo(line, err=True)  # noqa: E731 - the console, beside uvicorn's lines
    store = LiveStore(open_collections(settings), settings.collection, wait_while_held=True, notify=notify)
    if store.waiting is not None and in_place:
        notify(f"An ingest (pid {ingest.get('pid', '?')}, `{ingest.get('command', '?')}`, since "
               f"{ingest.get('since', '?')}) is adding images to collection {settings.collection!r} in place, so its "
               "live version cannot be opened yet. The API starts now and answers searches with 503 (naming that "
               "ingest) until it finishes, then serves the collection without a restart. (Start `dermground serve` "
               "before an ingest and the ingest writes a copy and switches to it, so the API answers throughout.)")
    elif store.waiting is not None:
        notify(f"`dermground {owner['brief']}` (pid {owner.get('pid', '?')}, since {owner.get('since', '?')}) is "
               f"reading the live version of collection {settings.collection!r} for a moment, so it cannot be "
               "opened yet. The API starts now, answers searches with 503 (naming it) until it lets go, then "
               "serves the collection without a restart.")
    return store
