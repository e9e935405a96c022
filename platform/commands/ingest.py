"""`dermground ingest`: embed a data set and store it in a collection (resumable, poison-proof)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from dermground.platform.commands.context import collection_name, current_settings, from_settings, with_qdrant_url
from dermground.platform.next_step import next_command

# Images per embedding batch: on a CPU small batches keep results flowing to the writer; on an
# H100 batches of 16 were the fastest for the 2B (docs/BENCHMARKS.md, session 6).
CPU_BATCH_SIZE = 8
GPU_BATCH_SIZE = 16


@click.command("ingest")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="ISIC 2024 / SLICE-3D folder (train-metadata.csv + train-image.hdf5 or train-image/image/).")
@click.option("--collection", callback=collection_name,
              default=from_settings("collection"), show_default="DERMGROUND_COLLECTION",
              help="Collection to ingest into (one collection per data set and model).")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Qwen2-VL checkpoint folder [default: DERMGROUND_MODEL_DIR or HOME/models/base].")
@click.option("--adapter", "adapter_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="LoRA adapter folder [default: DERMGROUND_ADAPTER_DIR, else none].")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="train", show_default=True,
              help="Which patient split to ingest (search collections hold the train split).")
@click.option("--qdrant-url", default=None,
              help="Qdrant server URL [default: DERMGROUND_QDRANT_URL, else the embedded store under HOME].")
@click.option("--ray-address", default=None,
              help="Existing Ray cluster (host:port or auto) [default: DERMGROUND_RAY_ADDRESS, else local Ray].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per embedding batch [default: 8; 16 with --gpus-per-actor, the fastest measured on "
                   "an H100 for the 2B].")
@click.option("--actors", type=click.IntRange(min=1), default=1, show_default=True,
              help="Embedding actors (model copies); each gets the cluster's CPUs / actors.")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0.5), default=None,
              help="CPUs (and torch threads) per embedding actor [default: the cluster's CPUs / --actors; "
                   "1 with --gpus-per-actor]. CPUs the actors leave run the CPU stage (reading, decoding and "
                   "patchifying images, one task per CPU); with none left each actor prepares its own.")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs per embedding actor (0 = CPU).")
@click.option("--partition-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Rows per committed partition (keep it fixed between a run and its resumptions).")
@click.option("--new-version", is_flag=True,
              help="Build a new version beside the live one (e.g. after training a new adapter); switch to it "
                   "with `dermground collections switch`.")
@click.option("--version", "version", default=None,
              help="Write into this existing version (v2, ...), e.g. to resume an interrupted --new-version.")
@click.option("--index-min-points", type=click.IntRange(min=0), default=from_settings("store_index_min_points"),
              show_default="DERMGROUND_STORE_INDEX_MIN_POINTS",
              help="Build the HNSW search index at the end once the collection holds this many points (0 = never).")
def ingest(data_dir: Path, collection: str, model_dir: Path | None, adapter_dir: Path | None, split: str,
           qdrant_url: str | None, ray_address: str | None, batch_size: int | None, actors: int,
           cpus_per_actor: float | None, gpus_per_actor: float, partition_size: int, new_version: bool,
           version: str | None, index_min_points: int) -> None:
    """Embed every image (h_im + the 16 h_im_a) and store points, catalog rows and the ledger.

    A rerun skips committed partitions; a killed run resumes with nothing lost or doubled. Bad
    images and rows are quarantined with a reason (see `dermground sql "SELECT * FROM quarantine"`).
    While `dermground serve` holds the embedded store, the ingest writes a new version seeded with
    the live points and switches to it when done: the API follows without a restart.
    """
    from dermground.ingest.job import IngestJob
    from dermground.ingest.pipeline import run_ingest
    from dermground.platform.model.checkpoint_check import require_usable_checkpoint
    from dermground.platform.model.loading import BackboneError
    from dermground.platform.store import SchemaMismatchError, StoreError, StoreLockedError

    settings = with_qdrant_url(current_settings(), qdrant_url)
    import ray.data  # noqa: F401 - configures its logger on import; quiet it after

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our bar replaces Ray Data's chatter
    try:
        require_usable_checkpoint(model_dir or settings.base_model_dir, data_dir)  # before Ray and the store
        if batch_size is None:
            batch_size = GPU_BATCH_SIZE if gpus_per_actor > 0 else CPU_BATCH_SIZE
        job = IngestJob.build(data_dir, collection, settings, model_dir=model_dir, adapter_dir=adapter_dir,
                              split=split, partition_size=partition_size, batch_size=batch_size,  # type: ignore[arg-type]
                              actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                              ray_address=ray_address, new_version=new_version, version=version,
                              index_min_points=index_min_points)
        summary = run_ingest(job, progress=True, notify=lambda text: click.echo(text, err=True))
    except StoreLockedError as exc:
        raise click.ClickException(f"{exc}\nNothing was ingested; rerun when the store is free.") from None
    except SchemaMismatchError as exc:
        raise click.ClickException(f"{exc}\nA new model's vectors go into a new version: add --new-version.") from None
    except BackboneError as exc:
        raise click.ClickException(f"{exc}\nPass --model DIR (and --adapter DIR) or set DERMGROUND_MODEL_DIR.") from None
    except (StoreError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"{exc}\nCommitted partitions are kept: fix the cause and rerun to resume.") from None
    if summary.died_runs:
        click.echo(f"earlier ingest run(s) that died were marked 'died': {', '.join(summary.died_runs)}")
    click.echo(f"ingested {summary.ingested}, skipped {summary.skipped} (already present), "
               f"quarantined {summary.quarantined} in {summary.seconds:.1f} s "
               f"({summary.partitions} partition(s) committed, {summary.partitions_skipped} skipped; run {summary.run_id})")
    if summary.switched_from:
        click.echo(f"{collection} now points at {summary.version} (was {summary.switched_from}; drop it with "
                   f"`{next_command(f'collections drop {collection} {summary.switched_from}')}`)")
    elif new_version or version:
        click.echo(f"version {summary.version} is ready; make it live (if it is not) with "
                   f"`{next_command(f'collections switch {collection} {summary.version}')}`")
    if summary.model_busy.fraction is not None:
        click.echo(summary.model_busy.describe())
    if summary.quarantine_reasons:
        reasons = ", ".join(f"{field}: {n}" for field, n in sorted(summary.quarantine_reasons.items()))
        details = next_command(f"sql \"SELECT * FROM quarantine WHERE run_id = '{summary.run_id}'\"")
        click.echo(f"quarantined by field: {reasons} (details: {details})")
    if summary.catalog_compaction is not None:
        click.echo(f"catalog compacted: {summary.catalog_compaction}")
    if summary.index is not None and (summary.index.built or summary.index.indexed_points):
        click.echo(f"search index: {summary.index.reason} over {summary.index.points:,} points "
                   f"in {summary.index.seconds:.1f} s ({summary.index.indexed_points:,} indexed)")
