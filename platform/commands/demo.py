"""`dermground demo`: the whole pipeline end to end on synthetic data, resumable."""

from __future__ import annotations

from pathlib import Path

import click

from dermground.platform.commands.context import current_settings


@click.command("demo")
@click.option("--small", is_flag=True, help="A few-minute version (fewer patients and images).")
@click.option("--force", is_flag=True, help="Redo every stage, even finished ones.")
def demo(small: bool, force: bool) -> None:
    """Build the tiny model, synthesise data, train, ingest, evaluate and serve."""
    from dermground.platform.demo import FULL, SMALL, plan_stages, run_stages

    home: Path = current_settings().home
    size = SMALL if small else FULL
    try:
        run_stages(home, plan_stages(home, size), echo=click.echo, force=force)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"[demo] all stages done; artefacts under {home / 'demo'}")
