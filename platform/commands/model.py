"""`dermground model`: build the tiny local model, check, inspect and export a backbone."""

from __future__ import annotations

from pathlib import Path

import click

from dermground.platform.commands.context import current_settings


@click.group("model")
def model() -> None:
    """Build, check, inspect or export the Qwen2-VL / Qwen2.5-VL backbone."""


@model.command("init-tiny")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write the checkpoint to [default: DERMGROUND_MODEL_DIR or HOME/models/base].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: same seed, same weights.")
@click.option("--preset", type=click.Choice(["tiny", "small"]), default="tiny", show_default=True,
              help="tiny: 0.7 M params, 224 px (tests); small: ~16 M params, 448 px (benchmarks, demo).")
@click.option("--image-size", type=int, default=None,
              help="Override the preset's image size in px (a multiple of 28).")
@click.option("--force", is_flag=True, help="Overwrite a folder that already holds a model.")
@click.option("--family", type=click.Choice(["qwen2_vl", "qwen2_5_vl"]), default="qwen2_vl", show_default=True,
              help="Architecture: Qwen2-VL or Qwen2.5-VL (windowed vision attention, gated vision MLP).")
@click.option("--qwen-tokenizer", "qwen_tokenizer", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None,
              help="Folder with Qwen's tokenizer.json + tokenizer_config.json (`make qwen-tokenizer` puts them in "
                   ".cache/qwen-tokenizer/models): write the model laid out like a hub download instead (vocabulary "
                   "151,936, sharded bfloat16 weights, published configs; ~20 MB). --preset and --image-size do not apply.")
def init_tiny(out: Path | None, seed: int, preset: str, image_size: int | None, force: bool, family: str,
              qwen_tokenizer: Path | None) -> None:
    """Build a small random-weight Qwen2-VL (or Qwen2.5-VL) with a local tokenizer and processor, offline."""
    target = out if out is not None else current_settings().base_model_dir
    if (target / "config.json").exists() and not force:
        raise click.ClickException(f"{target} already holds a model; pass --force to overwrite it or choose another --out")
    from dermground.platform.model.fingerprint import fingerprint
    from dermground.platform.model.hub_layout import write_hub_checkpoint
    from dermground.platform.model.tiny import save_tiny_model

    try:
        if qwen_tokenizer is not None:
            path = write_hub_checkpoint(target, qwen_tokenizer, family=family, seed=seed)
            preset = "hub-layout"
        else:
            path = save_tiny_model(target, seed=seed, preset=preset, image_size=image_size, family=family)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # a file where a folder of --out should be, a read-only or full disk
        raise click.ClickException(f"--out {target}: cannot write the model there ({exc.strerror or exc}); pass a "
                                   "folder on a writable disk whose parents are folders") from None
    click.echo(f"wrote {preset} {family} model (seed {seed}) to {path}")
    click.echo(f"fingerprint {fingerprint(path)}")


@model.command("info")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint folder [default: DERMGROUND_MODEL_DIR or HOME/models/base].")
@click.option("--adapter", "adapter_dir", type=click.Path(path_type=Path), default=None,
              help="LoRA adapter folder [default: DERMGROUND_ADAPTER_DIR, else none].")
def info(model_dir: Path | None, adapter_dir: Path | None) -> None:
    """Load a backbone and print its size, embedding dimension and fingerprint."""
    from dermground.platform.model.loading import BackboneError, load_backbone

    settings = current_settings()
    try:
        backbone = load_backbone(model_dir or settings.base_model_dir, adapter_dir or settings.adapter_dir,
                                 device=settings.device, dtype=settings.dtype)
    except BackboneError as exc:
        raise click.ClickException(str(exc)) from None
    from dermground.platform.model.families import family_of_model, vision_width

    core = backbone.core
    total = sum(p.numel() for p in core.parameters())
    vision = sum(p.numel() for p in core.model.visual.parameters())
    text, vis = core.config.text_config, core.config.vision_config
    size = backbone.processor.image_processor.size
    click.echo(f"model        {backbone.model_dir}")
    click.echo(f"family       {family_of_model(core).label} ({core.config.model_type})")
    click.echo(f"adapter      {backbone.adapter_dir or '-'}")
    click.echo(f"parameters   {total:,} (vision {vision:,})")
    click.echo(f"decoder      hidden {text.hidden_size}, layers {text.num_hidden_layers}, heads {text.num_attention_heads}")
    click.echo(f"vision       depth {vis.depth}, embed {vision_width(vis)}")
    click.echo(f"image pixels {size.shortest_edge}..{size.longest_edge}")
    click.echo(f"embedding d  {backbone.hidden_size}")
    click.echo(f"device       {backbone.device} / {str(backbone.dtype).removeprefix('torch.')}")
    click.echo(f"fingerprint  {backbone.fingerprint}")


@model.command("check")
@click.argument("model_dir", type=click.Path(path_type=Path), required=False)
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="ISIC-format data folder: also check how many image tokens its crops become.")
@click.option("--adapter", "adapter_dir", type=click.Path(path_type=Path), default=None,
              help="LoRA adapter folder: also check that it fits this base (family, sizes, rank, target modules).")
def check(model_dir: Path | None, data_dir: Path | None, adapter_dir: Path | None) -> None:
    """Check a checkpoint folder (and an adapter) before a long job: files, tokenizer, image settings, whether the
    adapter fits the base (no weights loaded).

    Every problem names the file and the fix; the exit status is 1 when there is any. `train`,
    `ingest` and `serve` run the same check at start.
    """
    from dermground.platform.model.adapter_fit import require_adapter_fits
    from dermground.platform.model.checkpoint_check import check_checkpoint, sample_crop_sizes
    from dermground.platform.model.loading import BackboneError

    path = model_dir or current_settings().base_model_dir
    try:
        crops = sample_crop_sizes(data_dir) if data_dir is not None else ()
    except (OSError, ValueError) as exc:  # no metadata CSV, missing columns, unreadable image file
        raise click.ClickException(f"--data {data_dir}: {exc}") from None
    report = check_checkpoint(path, crops)
    for key, value in report.facts.items():
        click.echo(f"{key:<13}{value}")
    if not report.ok:
        raise click.ClickException(report.summary())
    if adapter_dir is not None:
        try:
            require_adapter_fits(adapter_dir, path, warn_unrecorded=False)  # said below, on stdout
        except BackboneError as exc:
            raise click.ClickException(str(exc)) from None
        from dermground.platform.model.base_weights import unchecked_base_note

        note = unchecked_base_note(adapter_dir, path)
        if note is not None:
            click.echo(f"adapter      {adapter_dir} fits by its shapes; {note}")
        else:
            click.echo(f"adapter      {adapter_dir} fits (shapes, and the base weights it was trained on)")
    click.echo(f"ok: {path} can be used")


@model.command("export")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Base checkpoint folder [default: DERMGROUND_MODEL_DIR or HOME/models/base].")
@click.option("--adapter", "adapter_dir", type=click.Path(path_type=Path), default=None,
              help="LoRA adapter folder a training run wrote [default: DERMGROUND_ADAPTER_DIR].")
@click.option("--merge", is_flag=True, help="Merge the adapter into the base weights (required: the adapter "
              "folder itself is already the unmerged export).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the merged checkpoint to.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="Dtype of the saved weights (auto: the base's stored dtype).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out (after the new export is verified).")
def export(model_dir: Path | None, adapter_dir: Path | None, merge: bool, out_dir: Path, dtype: str,
           force: bool) -> None:
    """Save base + adapter as one plain Hugging Face checkpoint that transformers loads without dermground.

    Runs on the CPU: the base is loaded in float32 to merge (a 7B: ~31 GiB of RAM), and the saved
    copy is reloaded in the saved dtype and compared tensor by tensor before it replaces anything.
    """
    from dermground.platform.model.export import export_merged
    from dermground.platform.model.loading import BackboneError

    if not merge:
        raise click.ClickException("only merged exports are written: pass --merge (to serve the adapter unmerged, "
                                   "load the adapter folder with peft.PeftModel.from_pretrained)")
    settings = current_settings()
    adapter = adapter_dir or settings.adapter_dir
    if adapter is None:
        raise click.ClickException("no adapter to merge: pass --adapter DIR (the folder `dermground train --out` wrote)")
    click.echo("merging and verifying ...", err=True)
    try:
        result = export_merged(model_dir or settings.base_model_dir, adapter, out_dir, dtype=dtype, force=force)
    except BackboneError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote merged checkpoint to {result.out_dir} ({result.parameters:,} parameters, "
               f"{str(result.dtype).removeprefix('torch.')}; copied {', '.join(result.copied_files) or 'no other files'})")
