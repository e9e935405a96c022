"""`dermground pretrain`: generic image-statistics pre-training of the tiny model (demo/tests only)."""

from __future__ import annotations

from pathlib import Path

import click

from dermground.platform.commands.context import current_settings, from_settings


@click.command("pretrain")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="ISIC-format data folder; the pixels of its train-split images are used.")
@click.option("--base", "base_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Random tiny model folder (`dermground model init-tiny`) "
                   "[default: DERMGROUND_MODEL_DIR or HOME/models/base].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the pre-trained model (a new base model; use it as --base / --model later).")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True, help="Passes over the questions.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Global batch size.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Peak learning rate (AdamW, warm-up then cosine).")
@click.option("--questions-per-image", type=click.IntRange(min=1, max=10), default=10, show_default=True,
              help="Image-statistics questions asked per image.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps.")
@click.option("--tower-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="First train the vision tower alone for this many steps on local colour and texture statistics "
                   "of each image token (train/tower_pretrain.py), with the same --batch-size, --lr and --seed; "
                   "0 skips that stage.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Ray Train workers.")
@click.option("--seed", type=int, default=from_settings("seed"), show_default="DERMGROUND_SEED", help="Seed.")
@click.option("--ray-address", default=from_settings("ray_address"), show_default="DERMGROUND_RAY_ADDRESS",
              help="Existing Ray cluster to run on [default: a local Ray].")
def pretrain(data_dir: Path, base_dir: Path | None, out_dir: Path, ray_address: str | None,
             **hyperparameters: object) -> None:
    """Teach the random tiny model generic image-statistics answers (not the 16 attributes)."""
    from dermground.platform.model.loading import BackboneError
    from dermground.train.config import PretrainConfig
    from dermground.platform.out_folder import OutFolderError
    from dermground.train.model_swap import ModelNotSavedError
    from dermground.train.pretrain import PRETRAIN_METADATA_FILE, pretrain_base
    from dermground.train.run_checkpoints import RunBusyError

    base = base_dir or current_settings().base_model_dir
    try:
        # Every other option is named after its PretrainConfig field (tests/test_train_config.py checks that).
        config = PretrainConfig(**hyperparameters)
        meta = pretrain_base(data_dir, base, out_dir, config, ray_address=ray_address, progress=True)
    except (BackboneError, OutFolderError, RunBusyError, ModelNotSavedError) as exc:
        raise click.ClickException(str(exc)) from None
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"{exc}\nCheck --data / --base / --out.") from None
    curve = meta["loss_curve"]
    if meta["tower"]:
        click.echo(f"vision tower: {meta['tower']['hyperparameters']['steps']} steps on {meta['tower']['n_images']} "
                   f"images, final loss {meta['tower']['final_loss']:.4f} (1 = predicting the mean)")
    click.echo(f"pre-trained {meta['steps']} steps on {meta['n_tuples']} questions in {meta['seconds']:.1f} s; "
               f"final loss {curve[-1][1]:.4f}" if curve else "no steps run")
    if meta["n_left_out"]:
        click.echo(f"left out {meta['n_left_out']} training records the image checks refused (named above; listed in "
                   f"{PRETRAIN_METADATA_FILE})")
    click.echo(f"model written to {out_dir} (fingerprint {meta['fingerprint']})")
