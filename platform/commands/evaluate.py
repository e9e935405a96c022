"""`dermground eval`: evaluation commands (attribute prediction; retrieval lives here too)."""

from __future__ import annotations

from pathlib import Path

import click

from dermground.platform.commands.context import collection_name, current_settings
from dermground.platform.next_step import next_command
from dermground.platform.settings import MAX_PREDICT_SAMPLES, MAX_VIEWS, PREDICT_POOLS


@click.group("eval")
def evaluate() -> None:
    """Evaluate a backbone (and adapter) on the test split."""


@evaluate.command("predict")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="ISIC-format data folder; its test split is evaluated.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Base checkpoint folder [default: DERMGROUND_MODEL_DIR or HOME/models/base].")
@click.option("--adapter", "adapter_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="LoRA adapter folder (leave out to evaluate the base model).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for prediction.json and the R² bar chart.")
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Evaluate only the first N test images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per batch.")
@click.option("--samples", type=click.IntRange(min=0, max=MAX_PREDICT_SAMPLES), default=None,
              help="Sampled answers per question and view; the prediction is their mean (the model's expected "
                   "value). 0: the greedy answer. Unless that is one view's greedy answer, prediction_greedy.json "
                   "scores the greedy answers to the images as given too. "
                   "[default: DERMGROUND_PREDICT_SAMPLES, 4]")
@click.option("--views", type=click.IntRange(min=1, max=MAX_VIEWS), default=None,
              help="Ask each image in this many of its 8 turns and mirror images (1, 2, 4 or 8 are whole groups) "
                   "and pool the answers of all views; --samples is per view. 1: the image as given. "
                   "[default: DERMGROUND_PREDICT_VIEWS, 8]")
@click.option("--pool", type=click.Choice(PREDICT_POOLS), default=None,
              help="How the pooled answers become one value: their mean (the expected value) or their median "
                   "(robust to a few answers with a slipped decimal point). [default: DERMGROUND_PREDICT_POOL, mean]")
@click.option("--seed", type=int, default=None, help="Seed of the sampling noise [default: DERMGROUND_SEED].")
@click.option("--no-catalog", is_flag=True, help="Do not write predictions/evaluations into the catalog.")
def predict(data_dir: Path, model_dir: Path | None, adapter_dir: Path | None, out_dir: Path, max_images: int | None,
            batch_size: int, samples: int | None, views: int | None, pool: str | None, seed: int | None,
            no_catalog: bool) -> None:
    """Predict all 16 attributes for every test image; R² per attribute, parse rate, bar chart."""
    import statistics

    from dermground.platform.model.loading import BackboneError
    from dermground.platform.out_folder import OutFolderError
    from dermground.eval.predictions import FIGURE_FILE, PREDICTION_FILE, evaluate_predictions

    settings = current_settings()
    try:
        report = evaluate_predictions(
            data_dir, model_dir or settings.base_model_dir, adapter_dir, out_dir,
            catalog_dir=None if no_catalog else settings.catalog_dir, collection=settings.collection,
            max_images=max_images, batch_size=batch_size, samples=settings.predict_samples if samples is None else samples,
            views=settings.predict_views if views is None else views,
            pool=pool or settings.predict_pool, seed=settings.seed if seed is None else seed, device=settings.device,
            progress=True)
    except (BackboneError, OutFolderError) as exc:
        raise click.ClickException(str(exc)) from None
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"{exc}\nCheck --data (make one with `{next_command('synth --out DIR')}`).") from None
    click.echo(f"{'attribute':<24}{'R2':>8}{'parsed':>8}{'n':>6}")
    for name, row in report.items():
        click.echo(f"{name:<24}{row['r2']:>8.3f}{row['parse_rate']:>8.3f}{row['n']:>6}")
    r2 = [row["r2"] for row in report.values() if row["r2"] == row["r2"]]
    click.echo(f"median R2 {statistics.median(r2) if r2 else float('nan'):.3f}, "
               f"min R2 {min(r2) if r2 else float('nan'):.3f}, "
               f"parse rate {statistics.mean(row['parse_rate'] for row in report.values()):.3f}")
    skipped = next(iter(report.values()), {}).get("skipped", 0)
    if skipped:
        click.echo(f"skipped {skipped} test record(s): an image that was refused or a repeated isic_id "
                   "(each named above with its reason)")
    click.echo(f"wrote {out_dir / PREDICTION_FILE} and {out_dir / FIGURE_FILE}")


@evaluate.command("retrieval")
@click.option("--collection", callback=collection_name,
              default=None, help="Tuned collection (train+test ingested) [default: DERMGROUND_COLLECTION].")
@click.option("--untuned-collection", callback=collection_name,
              default=None,
              help="Collection ingested with the base model alone, for method image_untuned (d).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for retrieval.json, the boxplots PNG and the medians table.")
@click.option("--methods", default=None,
              help="Comma-separated subset of image_text,hierarchical,image,image_untuned,baseline,random "
                   "[default: all that apply].")
@click.option("--attribute", "attributes", multiple=True, help="Only these attributes (repeatable) [default: all 16].")
@click.option("--queries", type=click.IntRange(min=1), default=None, help="Use N test queries (seeded sample).")
@click.option("--b", type=click.IntRange(min=1), default=200, show_default=True, help="Candidates for hierarchical.")
@click.option("--k", type=click.IntRange(min=1), default=5, show_default=True, help="Hits per query.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the query sample and random method.")
def retrieval(collection: str | None, untuned_collection: str | None, out_dir: Path, methods: str | None,
              attributes: tuple[str, ...], queries: int | None, b: int, k: int, seed: int) -> None:
    """Figure 4: percentile of |Δattribute|² of the top-k among all train images, per method."""
    from dermground.platform.search_request import SearchError
    from dermground.platform.store import StoreError
    from dermground.eval.retrieval import FIGURE_FILE, METHODS, RESULT_FILE, TABLE_FILE, evaluate_retrieval

    settings = current_settings()
    chosen = [m.strip() for m in methods.split(",")] if methods else [
        m for m in METHODS if m != "image_untuned" or untuned_collection]
    try:
        evaluate_retrieval(settings, collection or settings.collection, out_dir,
                                     untuned_collection=untuned_collection, methods=chosen,
                                     attributes=attributes or None, queries=queries, b=b, k=k, seed=seed,
                                     catalog_dir=settings.catalog_dir)
    except (ValueError, KeyError, StoreError, SearchError) as exc:
        raise click.ClickException(f"{exc}") from None
    click.echo((out_dir / TABLE_FILE).read_text())
    click.echo(f"wrote {out_dir / RESULT_FILE}, {out_dir / FIGURE_FILE}, {out_dir / TABLE_FILE}")
