"""The `dermground` command line: a root group whose subcommands are imported on demand.

Lazy imports keep `dermground --help` instant: torch, Ray and transformers load only for the
commands that need them.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import click

from dermground.platform.commands.context import current_settings, use_settings
from dermground.platform.next_step import carry_root_flag, forget_carried
from dermground.platform.settings import SettingsError, load_settings

# command name -> "module:attribute" (module under dermground.platform.commands)
LAZY_COMMANDS: dict[str, str] = {
    "attributes": "attributes:attributes",
    "sql": "sql:sql",
    "serve": "serve:serve",
    "search": "search:search",
    "model": "model:model",
    "synth": "synth:synth",
    "demo": "demo:demo",
    "train": "train:train",
    "pretrain": "pretrain:pretrain",
    "eval": "evaluate:evaluate",
    "ingest": "ingest:ingest",
    "check": "check:check",
    "snapshot": "snapshot:snapshot",
    "collections": "collections:collections",
    "catalog": "catalog:catalog",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module_name, attr = LAZY_COMMANDS[cmd_name].split(":")
            module = importlib.import_module(f"dermground.platform.commands.{module_name}")
            return getattr(module, attr)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except FileNotFoundError as exc:
            # A catalog missing a compacted file (catalog_files.MissingCatalogFile), under any command
            # that reads it: its message names the file and what to do; a traceback would bury it.
            files = sys.modules.get("dermground.platform.catalog_files")  # loaded by whoever raised it
            if files is not None and isinstance(exc, files.MissingCatalogFile):
                raise click.ClickException(str(exc)) from None
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Home folder for models, store and catalog [default: DERMGROUND_HOME or ./.dermground].")
@click.version_option(package_name="dermground")
def cli(home: Path | None) -> None:
    """dermground: find lesions that look alike and match in a chosen attribute."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never call a hub at run time
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    forget_carried()  # one process may run several invocations (tests, `python -m`): nothing of the last one
    carry_root_flag("--home", home)  # suggested next commands act on the same home
    click.get_current_context().call_on_close(forget_carried)
    if home is not None:
        try:
            use_settings(load_settings(home=home))
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        current_settings()  # fail at start, naming the bad variable


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="dermground")
