"""`dermground demo`: the whole pipeline end to end on synthetic data, resumable."""

from __future__ import annotations

from pathlib import Path

import click

from dermground.platform.commands.context import current_settings
from dermground.platform.next_step import next_command


@click.command("demo")
@click.option("--small", is_flag=True, help="A few-minute version (fewer patients and images).")
@click.option("--force", is_flag=True, help="Redo every stage, even finished ones.")
@click.option("--serve/--no-serve", default=True, show_default=True,
              help="Serve the API and viewer on 127.0.0.1 when the stages are done.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to serve on.")
def demo(small: bool, force: bool, serve: bool, port: int) -> None:
    """Build the tiny model, synthesise data, pre-train, train, ingest, evaluate and serve.

    Every stage is resumable: a second run reuses the stages that finished.
    """
    import subprocess

    from dermground.platform.demo import FULL, SMALL, plan_stages, run_stages, serve_command

    home: Path = current_settings().home
    size = SMALL if small else FULL
    try:
        run_stages(home, plan_stages(home, size), echo=click.echo, force=force,
                   rerun=next_command("demo --small" if small else "demo"))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    evals = home / "demo" / "eval"
    click.echo(f"[demo] all stages done. R² per attribute: {evals / 'predict' / 'prediction.json'}; "
               f"retrieval medians: {evals / 'retrieval' / 'retrieval_medians.md'}")
    if serve:
        click.echo(f"[demo] serving the viewer at http://127.0.0.1:{port}/ (API docs at /docs); Ctrl-C stops it")
        try:
            subprocess.run(serve_command(home, port))
        except KeyboardInterrupt:
            pass
