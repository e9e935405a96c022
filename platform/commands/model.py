"""`dermground model`: build the tiny local model, inspect a backbone."""

from __future__ import annotations

from pathlib import Path

import click

from dermground.platform.commands.context import current_settings


@click.group("model")
def model() -> None:
    """Build or inspect the Qwen2-VL backbone."""


@model.command("init-tiny")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write the checkpoint to [default: the settings' base model dir].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: same seed, same weights.")
@click.option("--preset", type=click.Choice(["tiny", "small"]), default="tiny", show_default=True,
              help="tiny: 0.7 M params, 224 px (tests); small: ~16 M params, 448 px (benchmarks, demo).")
@click.option("--image-size", type=int, default=None,
              help="Override the preset's image size in px (a multiple of 28).")
@click.option("--force", is_flag=True, help="Overwrite a folder that already holds a model.")
def init_tiny(out: Path | None, seed: int, preset: str, image_size: int | None, force: bool) -> None:
    """Build a small random-weight Qwen2-VL with a local tokenizer and processor, offline."""
    target = out if out is not None else current_settings().base_model_dir
    if (target / "config.json").exists() and not force:
        raise click.ClickException(f"{target} already holds a model; pass --force to overwrite it or choose another --out")
    from dermground.platform.model.fingerprint import fingerprint
    from dermground.platform.model.tiny import save_tiny_model

    try:
        path = save_tiny_model(target, seed=seed, preset=preset, image_size=image_size)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {preset} model (seed {seed}) to {path}")
    click.echo(f"fingerprint {fingerprint(path)}")


@model.command("info")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint folder [default: the settings' base model dir].")
@click.option("--adapter", "adapter_dir", type=click.Path(path_type=Path), default=None,
              help="LoRA adapter folder [default: the settings' adapter dir, if any].")
def info(model_dir: Path | None, adapter_dir: Path | None) -> None:
    """Load a backbone and print its size, embedding dimension and fingerprint."""
    from dermground.platform.model.loading import BackboneError, load_backbone

    settings = current_settings()
    try:
        backbone = load_backbone(model_dir or settings.base_model_dir, adapter_dir or settings.adapter_dir,
                                 device=settings.device, dtype=settings.dtype)
    except BackboneError as exc:
        raise click.ClickException(str(exc)) from None
    core = backbone.core
    total = sum(p.numel() for p in core.parameters())
    vision = sum(p.numel() for p in core.model.visual.parameters())
    text, vis = core.config.text_config, core.config.vision_config
    size = backbone.processor.image_processor.size
    click.echo(f"model        {backbone.model_dir}")
    click.echo(f"adapter      {backbone.adapter_dir or '-'}")
    click.echo(f"parameters   {total:,} (vision {vision:,})")
    click.echo(f"decoder      hidden {text.hidden_size}, layers {text.num_hidden_layers}, heads {text.num_attention_heads}")
    click.echo(f"vision       depth {vis.depth}, embed {vis.embed_dim}")
    click.echo(f"image pixels {size.shortest_edge}..{size.longest_edge}")
    click.echo(f"embedding d  {backbone.hidden_size}")
    click.echo(f"device       {backbone.device} / {str(backbone.dtype).removeprefix('torch.')}")
    click.echo(f"fingerprint  {backbone.fingerprint}")
