"""`dermground attributes`: print the attribute registry."""

from __future__ import annotations

import json

import click

from dermground.platform.attributes import ATTRIBUTES


@click.command("attributes")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def attributes(as_json: bool) -> None:
    """List the 16 quantitative attributes, their questions and answer formats."""
    if as_json:
        click.echo(json.dumps([a.to_dict() for a in ATTRIBUTES], indent=2, ensure_ascii=False))
        return
    header = f"{'name':<24}{'ISIC column':<28}{'unit':<7}{'dec':<4}{'range':<16}question"
    click.echo(header)
    click.echo("-" * len(header))
    for a in ATTRIBUTES:
        rng = f"[{a.low:g}, {a.high:g}]"
        click.echo(f"{a.name:<24}{a.isic_column:<28}{a.unit:<7}{a.decimals:<4}{rng:<16}{a.question}")
