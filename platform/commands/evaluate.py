"""`dermground eval`: evaluation commands (attribute prediction; retrieval lives here too)."""

from __future__ import annotations

from pathlib import Path

import click

from dermground.platform.commands.context import current_settings


@click.group("eval")
def evaluate() -> None:
    """Evaluate a backbone (and adapter) on the test split."""


@evaluate.command("predict")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="ISIC-format data folder; its test split is evaluated.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Base checkpoint folder [default: the settings' base model dir].")
@click.option("--adapter", "adapter_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="LoRA adapter folder (leave out to evaluate the base model).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for prediction.json and the R² bar chart.")
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Evaluate only the first N test images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per batch.")
@click.option("--no-catalog", is_flag=True, help="Do not write predictions/evaluations into the catalog.")
def predict(data_dir: Path, model_dir: Path | None, adapter_dir: Path | None, out_dir: Path, max_images: int | None,
            batch_size: int, no_catalog: bool) -> None:
    """Predict all 16 attributes for every test image; R² per attribute, parse rate, bar chart."""
    import statistics

    from dermground.platform.model.loading import BackboneError
    from dermground.train.evaluate import FIGURE_FILE, PREDICTION_FILE, evaluate_predictions

    settings = current_settings()
    try:
        report = evaluate_predictions(
            data_dir, model_dir or settings.base_model_dir, adapter_dir, out_dir,
            catalog_dir=None if no_catalog else settings.catalog_dir, collection=settings.collection,
            max_images=max_images, batch_size=batch_size, device=settings.device, progress=True)
    except BackboneError as exc:
        raise click.ClickException(str(exc)) from None
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"{exc}\nCheck --data (make one with `dermground synth`).") from None
    click.echo(f"{'attribute':<24}{'R2':>8}{'parsed':>8}{'n':>6}")
    for name, row in report.items():
        click.echo(f"{name:<24}{row['r2']:>8.3f}{row['parse_rate']:>8.3f}{row['n']:>6}")
    r2 = [row["r2"] for row in report.values() if row["r2"] == row["r2"]]
    click.echo(f"median R2 {statistics.median(r2) if r2 else float('nan'):.3f}, "
               f"min R2 {min(r2) if r2 else float('nan'):.3f}, "
               f"parse rate {statistics.mean(row['parse_rate'] for row in report.values()):.3f}")
    click.echo(f"wrote {out_dir / PREDICTION_FILE} and {out_dir / FIGURE_FILE}")
