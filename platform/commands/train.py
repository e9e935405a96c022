"""`dermground train`: LoRA-tune the backbone on D_tr through Ray Train."""

from __future__ import annotations

from pathlib import Path

import click

from dermground.platform.commands.context import current_settings, from_settings
from dermground.platform.next_step import next_command
from dermground.platform.settings import MAX_VIEWS


@click.command("train")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="ISIC-format data folder (train-metadata.csv + images); its train split is used.")
@click.option("--base", "base_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Base Qwen2-VL checkpoint folder [default: DERMGROUND_MODEL_DIR or HOME/models/base].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Adapter folder to write (re-running the same command resumes from its checkpoints). The new "
                   "adapter is staged next to it and swapped in once checked: its parent folder must be writable.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Ray Train workers (DDP when more than one).")
@click.option("--gpu", "use_gpu", is_flag=True, help="One GPU per worker.")
@click.option("--cpus-per-worker", type=click.IntRange(min=1), default=None,
              help="CPU cores per worker (also torch's thread count) [default: all cores / workers].")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True, help="Passes over D_tr.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Global batch size.")
@click.option("--micro-batch-size", type=click.IntRange(min=1), default=None,
              help="Per-worker micro batch (gradient accumulation) [default: the worker's whole share].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Peak learning rate (AdamW, cosine decay).")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=0, show_default=True, help="Linear warm-up steps.")
@click.option("--rank", type=click.IntRange(min=1), default=8, show_default=True, help="LoRA rank.")
@click.option("--alpha", type=click.IntRange(min=1), default=16, show_default=True, help="LoRA alpha.")
@click.option("--dropout", type=click.FloatRange(min=0, max=1, max_open=True), default=0.05, show_default=True,
              help="LoRA dropout.")
@click.option("--train-lm-head", is_flag=True,
              help="Also train the output layer fully (peft modules_to_save); helps small models.")
@click.option("--w", "w", type=click.IntRange(min=1, max=16), default=5, show_default=True,
              help="Attributes sampled per training image (W).")
@click.option("--seed", type=int, default=from_settings("seed"), show_default="DERMGROUND_SEED",
              help="Seed of the attribute sampling, data order and initialisation.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many optimiser steps.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="Checkpoint every N steps (0: only at the end).")
@click.option("--multi-attribute", is_flag=True, help="Also train one 2-3 attribute question per image.")
@click.option("--augment-views", type=click.IntRange(min=1, max=MAX_VIEWS), default=1, show_default=True,
              help="Show each training image, each time it is used, in one of its first N turns and mirror images "
                   "(drawn at random; 1, 2, 4 or 8 are whole groups). The attributes do not depend on the view. "
                   "1: the images as given (the paper).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: bfloat16 autocast with the frozen base stored in bfloat16 (trained weights stay float32); "
                   "1.5-3.3x faster steps on an H100 at Qwen2-VL-2B shapes, slower on most CPUs.")
@click.option("--gradient-checkpointing", is_flag=True,
              help="Recompute activations in the backward pass: ~7x less GPU memory at Qwen2-VL-2B shapes "
                   "(batch 16, 448 px: 57.8 -> 7.9 GiB), ~1.6x slower steps; same result.")
@click.option("--number-loss", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of a regression-like loss on the answers' digits added to the cross-entropy "
                   "(NTL-WAS: expected distance of the predicted digit from the true one; 0.3 is its authors' "
                   "choice). 0: cross-entropy only (the paper). The logged loss includes it.")
@click.option("--ray-address", default=from_settings("ray_address"), show_default="DERMGROUND_RAY_ADDRESS",
              help="Existing Ray cluster to run on [default: a local Ray].")
@click.option("--cache-mb", type=click.IntRange(min=0), default=2048, show_default=True,
              help="Memory per worker for encoded examples kept across epochs (0: re-encode every step); "
                   "speed only, the result is the same.")
def train(data_dir: Path, base_dir: Path | None, out_dir: Path, cpus_per_worker: int | None, train_lm_head: bool,
          ray_address: str | None, cache_mb: int, **hyperparameters: object) -> None:
    """Fine-tune the vision encoder and decoder with LoRA to answer the 16 attribute questions."""
    from dermground.platform.model.checkpoint_check import require_usable_checkpoint
    from dermground.platform.model.loading import BackboneError
    from dermground.train.adapter_swap import AdapterNotSavedError
    from dermground.train.config import TrainConfig
    from dermground.platform.out_folder import OutFolderError
    from dermground.train.out_folder import require_swappable_out
    from dermground.train.ray_train import METADATA_FILE, train_adapter
    from dermground.train.run_checkpoints import RunBusyError

    base = base_dir or current_settings().base_model_dir
    try:
        # Every other option is named after its TrainConfig field (tests/test_train_config.py checks that).
        config = TrainConfig(**hyperparameters, modules_to_save=("lm_head",) if train_lm_head else None)
        require_swappable_out(out_dir)  # before anything is read: a read-only --out fails in seconds
        require_usable_checkpoint(base, data_dir)  # before Ray starts: a bad folder fails in seconds
        result = train_adapter(data_dir, base, out_dir, config, cpus_per_worker=cpus_per_worker,
                               ray_address=ray_address, progress=True, cache_mb=cache_mb)
    except (AdapterNotSavedError, BackboneError, OutFolderError, RunBusyError) as exc:
        raise click.ClickException(str(exc)) from None
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"{exc}\nCheck --data (make one with `{next_command('synth --out DIR')}`) "
                                   "and the flags.") from None
    if result.resumed_from_step is not None:
        click.echo(f"resumed from step {result.resumed_from_step}")
    for step, loss in result.loss_curve[-5:]:
        click.echo(f"step {step:>6}  loss {loss:.4f}")
    click.echo(f"trained {result.steps} steps on {result.n_tuples} tuples in {result.seconds:.1f} s; "
               f"final loss {result.final_loss:.4f}")
    if result.left_out:
        click.echo(f"left out {len(result.left_out)} training records the image checks refused (named above; "
                   f"listed in {METADATA_FILE})")
    click.echo(f"adapter written to {out_dir} (metadata: {METADATA_FILE}, data fingerprint {result.data_fingerprint})")
