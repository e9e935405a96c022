"""The ingest pipeline: reader -> partitions -> Ray Data CPU stage -> embedding actors -> driver writer.

    summary = ingest_dataset(Path("data"), "lesions", load_settings(), model_dir=Path("models/base"))
    summary = run_ingest(IngestJob.build(Path("data"), "lesions", load_settings()))  # what the CLI does

The driver reads metadata, builds payloads (bad rows are quarantined before any embedding),
skips partitions the ledger says are committed, streams the rest through an actor pool that
loads the model once per actor, and commits each partition as soon as all its rows are back.
Only the driver writes: the embedded store is single-process. Actors read images by their
reference, so on a cluster every node must see the data folder and the model at the same paths.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dermground.ingest.embedding_actor import VECTOR_NAMES, EmbeddingActor
from dermground.ingest.image_prep import prepare_images
from dermground.ingest.job import IngestJob, SplitSelection
from dermground.ingest.model_busy import ModelBusy
from dermground.ingest.partitions import DEFAULT_PARTITION_SIZE, Partition, partition_records
from dermground.ingest.run_locks import hold_run_lock, note_ray_session, reap_dead_runs
from dermground.ingest.stage_plan import plan_stages
from dermground.ingest.targets import IngestTarget, open_target
from dermground.ingest.writer import (
    PartitionWriter,
    ReadyRecord,
    Rejection,
    committed_partitions,
    record_payload,
)
from dermground.platform.catalog import Catalog
from dermground.platform.catalog_compact import compact_if_fragmented
from dermground.platform.records import read_records, unique_records
from dermground.platform.settings import Settings
from dermground.platform.store import CollectionSpec, PayloadError, VectorStore, point_id
from dermground.platform.store.indexing import IndexReport, build_index_if_large

if TYPE_CHECKING:
    import ray.data

# Images per Ray Data execution: bounds the driver's memory (records and vectors of a wave) while
# keeping the actors' one-off model load negligible.
WAVE_IMAGES = 20_000
BATCHES_PER_BLOCK = 16


@dataclass
class IngestSummary:
    """What a run did: points written, records skipped as already committed, rows quarantined."""

    run_id: str
    collection: str
    ingested: int = 0
    skipped: int = 0
    quarantined: int = 0
    partitions: int = 0
    partitions_skipped: int = 0
    seconds: float = 0.0
    # Seconds from the start until the first embedded batch reached the driver (actor start-up and
    # model load included), and the rows it carried: the pipeline's fixed cost, for benchmarks.
    first_batch_seconds: float | None = None
    first_batch_rows: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    died_runs: list[str] = field(default_factory=list)  # earlier runs found dead and marked so
    version: str | None = None  # the version written (ingest/targets.py)
    switched_from: str | None = None  # the version it replaced as live, when the run switched
    # The HNSW index built at the finish (build time included in `seconds`), None if not tried.
    index: IndexReport | None = None
    # What the finish's catalog compaction merged (platform/catalog_compact.py), None when not needed.
    catalog_compaction: str | None = None
    # Seconds the embedding actors spent in the model against their time (the GPU's busy share).
    model_busy: ModelBusy = field(default_factory=ModelBusy)

    @property
    def images_per_second(self) -> float:
        return self.ingested / self.seconds if self.seconds > 0 else 0.0


def model_identity(model_dir: Path, adapter_dir: Path | None) -> tuple[int, str]:
    """(embedding dimension, fingerprint) of a model without loading its weights.

    Also checks that the CPU stage can prepare its images (platform/model/patch_recipe.py) and the
    adapter folder (its files, and that it fits the base: platform/model/adapter_fit.py)."""
    from dermground.platform.model.adapter_fit import require_adapter_fits
    from dermground.platform.model.fingerprint import fingerprint
    from dermground.platform.model.loading import BackboneError, check_model_dir
    from dermground.platform.model.patch_recipe import PatchRecipe, RecipeUnsupported

    path = check_model_dir(model_dir)
    # The embedding actors load the adapter; checked here (files, and that it fits the base), a bad
    # adapter stops the run before Ray starts.
    if adapter_dir is not None:
        require_adapter_fits(adapter_dir, path)
    try:
        PatchRecipe.from_model_dir(path)
    except RecipeUnsupported as exc:
        raise BackboneError(f"ingest cannot prepare images for {path}: {exc}; ingest supports Qwen2-VL's "
                            "published image settings (resize, rescale, normalise, RGB all on)") from None
    config = json.loads((path / "config.json").read_text())
    dim = int(config.get("text_config", {}).get("hidden_size") or config["hidden_size"])
    return dim, fingerprint(path, adapter_dir)


def _prepare(partition: Partition, fingerprint: str) -> tuple[list[ReadyRecord], list[Rejection]]:
    ready: list[ReadyRecord] = []
    rejections = [Rejection(r.isic_id, r.field, r.reason) for r in partition.rejected]
    for record in partition.records:
        try:
            ready.append(ReadyRecord(record, record_payload(record, fingerprint)))
        except PayloadError as exc:
            rejections.append(Rejection(exc.isic_id, exc.field, exc.reason))
    return ready, rejections


def _waves(partitions: Iterable[Partition], limit: int) -> Iterator[list[Partition]]:
    wave: list[Partition] = []
    size = 0
    for partition in partitions:
        wave.append(partition)
        size += len(partition)
        if size >= limit:
            yield wave
            wave, size = [], 0
    if wave:
        yield wave


def ingest_dataset(data_dir: Path, collection: str, settings: Settings, *, model_dir: Path | None = None,
                   adapter_dir: Path | None = None, split: SplitSelection = "train",
                   partition_size: int = DEFAULT_PARTITION_SIZE, batch_size: int = 8, actors: int = 1,
                   cpus_per_actor: float | None = None, gpus_per_actor: float = 0.0,
                   ray_address: str | None = None, progress: bool = True, new_version: bool = False,
                   version: str | None = None, notify: Callable[[str], None] = lambda _: None,
                   index_min_points: int | None = None) -> IngestSummary:
    """Build the IngestJob of these arguments (ingest/job.py: defaults and checks) and run it."""
    job = IngestJob.build(data_dir, collection, settings, model_dir=model_dir, adapter_dir=adapter_dir, split=split,
                          partition_size=partition_size, batch_size=batch_size, actors=actors,
                          cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor, ray_address=ray_address,
                          new_version=new_version, version=version, index_min_points=index_min_points)
    return run_ingest(job, progress=progress, notify=notify)


@dataclass
class _RunState:
    """What every level of a running ingest shares: the job, the model it embeds with, the writer, the tally."""

    job: IngestJob
    fingerprint: str
    writer: PartitionWriter
    summary: IngestSummary
    started: float
    ensure_collection: Callable[[], None]  # idempotent; before the store is read or written


def _collection_on_first_use(store: VectorStore, spec: CollectionSpec, target: IngestTarget) -> Callable[[], None]:
    """Creating a new collection (17 named vectors) takes 1-4 s on 2 cores: done at the first commit,
    while the actors embed, instead of in front of them. An existing version is checked at once, so
    another model's vectors are refused before any embedding."""
    done = False

    def ensure() -> None:
        nonlocal done
        if not done:
            store.ensure_collection(spec)
            target.started()
            done = True

    if store.describe() is not None:
        ensure()
    return ensure


def run_ingest(job: IngestJob, *, progress: bool = True, notify: Callable[[str], None] = lambda _: None,
               ) -> IngestSummary:
    """Embed and store every record of the job's data folder (one split or all); resumable.

    The job says which version to write (ingest/targets.py); the store is opened before any
    embedding. Raises SchemaMismatchError when the version holds another model's vectors and
    StoreLockedError when another process holds the version written. At the finish the HNSW index
    is built when the collection holds at least settings.store_index_min_points points (0 = never).
    """
    settings = job.settings
    dim, fingerprint = model_identity(job.model_dir, job.adapter_dir)
    started = time.perf_counter()
    run_id = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    summary = IngestSummary(run_id, job.collection)
    catalog = Catalog(settings.catalog_dir)
    spec = CollectionSpec(dim=dim, fingerprint=fingerprint)
    # The adapter as an absolute path: the API finds a version's model by it from any folder.
    target = open_target(settings, job.collection, catalog, source=job.source,
                         adapter=str(Path(job.adapter_dir).resolve()) if job.adapter_dir else None, spec=spec,
                         new_version=job.new_version, version=job.version, notify=notify)
    store = target.store
    summary.version = target.version
    status = "failed"
    run_lock = None
    try:
        run_lock = hold_run_lock(settings.home, run_id)
        summary.died_runs = [r.run_id for r in reap_dead_runs(catalog, settings.home)]
        ensure_collection = _collection_on_first_use(store, spec, target)
        # The catalog names the physical version: `check` compares a version with its own rows.
        writer = PartitionWriter(store, catalog, target.physical, fingerprint, run_id)
        run_row = {"run_id": run_id, "collection": target.physical, "fingerprint": fingerprint,
                   "source": job.source, "split": job.options.split,
                   "started_at": datetime.now(UTC), "options": json.dumps(asdict(job.options))}
        catalog.append("ingest_runs", [{**run_row, "status": "running"}])
        try:
            _run(_RunState(job, fingerprint, writer, summary, started, ensure_collection), catalog, progress)
            ensure_collection()  # also when nothing was embedded
            summary.index = _build_index(store, settings.store_index_min_points, progress)
            status = "done"
        finally:
            summary.seconds = time.perf_counter() - started
            catalog.append("ingest_runs", [{**run_row, "status": status, "finished_at": datetime.now(UTC),
                                            "n_ingested": summary.ingested, "n_skipped": summary.skipped,
                                            "n_quarantined": summary.quarantined}])
        if status == "done":
            # Many small catalog files slow every analyst's query: merge them once enough accumulate.
            compaction = compact_if_fragmented(settings.catalog_dir, settings.catalog_auto_compact_files)
            summary.catalog_compaction = str(compaction) if compaction is not None else None
        points = store.count()
    finally:
        if run_lock is not None:
            run_lock.release()
        store.close()
        if status != "done":
            target.close()
    try:
        summary.switched_from = target.finished(points)
        if target.note:
            notify(target.note)
    finally:
        target.close()
    return summary


def _run(state: _RunState, catalog: Catalog, progress: bool) -> None:
    from dermground.platform.progress import progress_bar

    job, writer = state.job, state.writer
    committed = committed_partitions(catalog, writer.collection, state.fingerprint)
    stream = unique_records(read_records(job.data_dir, split=job.reader_split, max_pixels=job.settings.max_image_pixels))
    total = None
    if job.options.split == "all":
        from dermground.platform.records import count_records

        total = count_records(job.data_dir)
    bar = progress_bar(total=total, unit="img", desc=f"ingest {writer.collection}", disable=not progress, smoothing=0.1)
    pending = _starting_ray(job, _skip_committed(state, partition_records(stream, job.options.partition_size),
                                                 committed, bar))
    try:
        for wave in _waves(pending, WAVE_IMAGES):
            _run_wave(state, wave, bar)
            bar.set_postfix(skipped=state.summary.skipped, quarantined=state.summary.quarantined)
    finally:
        bar.close()


def _skip_committed(state: _RunState, partitions: Iterable[Partition], committed: dict[str, int],
                    bar: object) -> Iterator[Partition]:
    summary = state.summary
    for partition in partitions:
        points = committed.get(partition.partition_id)
        if points is not None:
            state.ensure_collection()  # the ledger says the store holds it: the collection must exist
            stored = _stored_ids(state.writer.store, partition)
            if len(stored) >= points and not _quarantined_record_now_passes(
                    partition, stored, state.fingerprint, str(state.job.model_dir),
                    state.job.settings.max_image_pixels):
                summary.skipped += points
                summary.partitions_skipped += 1
                bar.update(len(partition))  # type: ignore[attr-defined]
                continue
        yield partition


def _starting_ray(job: IngestJob, partitions: Iterable[Partition]) -> Iterator[Partition]:
    """Start (or join) Ray at the first partition to embed, not once the wave is read: a local
    session's workers import the embedding stack (platform/ray_runtime.py) while the reader streams.
    A rerun with everything committed never starts Ray."""
    started = False
    for partition in partitions:
        if not started:
            from dermground.platform.ray_runtime import ensure_ray

            settings = job.settings
            session = ensure_ray(job.ray_address, num_cpus=settings.ray_num_cpus,
                                 object_store_mb=settings.ray_object_store_mb)
            if session:
                note_ray_session(session)  # stopped by the next start if this run dies
            started = True
        yield partition


def _stored_ids(store: VectorStore, partition: Partition) -> set[str]:
    """The ids of the partition's records the store holds.

    The ledger lives in the catalog and the points in the store: a partition whose points are no
    longer all there (a collection folder deleted or restored from an older snapshot behind the
    catalog's back) must be re-ingested, not skipped.
    """
    return {p.id for p in store.retrieve([point_id(r.isic_id) for r in partition.records], with_payload=False)}


def _quarantined_record_now_passes(partition: Partition, stored: set[str], fingerprint: str,
                                   model_dir: str, max_pixels: int) -> bool:
    """Whether a record of a committed partition that the store lacks (not in `stored`: quarantined
    for its image or a value after the reader) now passes the same checks: fixed since, so the
    partition is ingested again. Its id cannot say so: it changes with the rows the reader refuses,
    and these were refused after it."""
    from dermground.ingest.image_prep import INPUT_ERRORS, prepare_reference

    for record in partition.records:
        if point_id(record.isic_id) in stored:
            continue
        try:
            record_payload(record, fingerprint)
            prepare_reference(record.image_ref, model_dir, max_pixels)
        except (PayloadError, *INPUT_ERRORS):
            continue  # still refused: its quarantine row stands
        return True
    return False


def _run_wave(state: _RunState, wave: list[Partition], bar: object) -> None:
    summary = state.summary
    prepared = {p.index: (p, *_prepare(p, state.fingerprint)) for p in wave}

    def commit(index: int, vectors: dict[str, np.ndarray], errors: dict[str, str]) -> None:
        partition, ready, rejections = prepared.pop(index)
        state.ensure_collection()
        result = state.writer.write(partition, ready, rejections, vectors, errors, VECTOR_NAMES)
        summary.ingested += result.n_points
        summary.quarantined += result.n_quarantined
        summary.partitions += 1
        for r in rejections:
            summary.quarantine_reasons[r.field] = summary.quarantine_reasons.get(r.field, 0) + 1
        for reason in errors.values():
            if reason:
                summary.quarantine_reasons["image"] = summary.quarantine_reasons.get("image", 0) + 1
        bar.update(len(partition))  # type: ignore[attr-defined]

    for index in [i for i, (_, ready, _) in prepared.items() if not ready]:
        commit(index, {}, {})  # nothing to embed: commit its rejections right away
    items = [{"isic_id": item.record.isic_id, "image_ref": item.record.image_ref, "part": index}
             for index, (_, ready, _) in prepared.items() for item in ready]
    if not items:
        return
    expected = {index: len(ready) for index, (_, ready, _) in prepared.items() if ready}
    received: dict[int, tuple[dict[str, np.ndarray], dict[str, str]]] = {i: ({}, {}) for i in expected}
    clock = summary.model_busy.wave(state.job.options.actors)
    for batch in _embed_items(state.job, state.fingerprint, items, len(expected)):
        clock.observe(batch["actor"], batch["model_seconds"], batch["batch_finished"])
        if summary.first_batch_seconds is None:
            summary.first_batch_seconds = time.perf_counter() - state.started
            summary.first_batch_rows = len(batch["isic_id"])
        for isic_id, part, error, vectors in zip(batch["isic_id"], batch["part"], batch["error"], batch["vectors"],
                                                 strict=True):
            index = int(part)
            got_vectors, got_errors = received[index]
            got_errors[str(isic_id)] = str(error)
            if not error:
                got_vectors[str(isic_id)] = np.asarray(vectors, dtype=np.float32)
            if len(got_errors) == expected[index]:
                commit(index, *received.pop(index))
    clock.finish()
    if received:
        raise RuntimeError(f"the embedding pipeline returned no rows for partitions {sorted(received)}")


def _embed_items(job: IngestJob, fingerprint: str, items: list[dict[str, object]],
                 n_partitions: int) -> Iterator[dict[str, np.ndarray]]:
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True  # partitions complete in reader order
    context.enable_progress_bars = False  # the CLI shows its own bar
    try:
        # prefetch_batches=0: a block reaches the writer when it is done, not when the next one is
        # (measured: with Ray Data's default of 1, each block waited ~1 s for its successor).
        yield from embedding_dataset(job, fingerprint, items, n_partitions).iter_batches(
            batch_size=None, batch_format="numpy", prefetch_batches=0)
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved


def embedding_dataset(job: IngestJob, fingerprint: str, items: list[dict[str, object]],
                      n_partitions: int) -> ray.data.Dataset:
    """The Ray Data plan of one wave: items -> CPU stage (prepare_images) -> embedding actors."""
    import ray
    import ray.data

    options = job.options
    plan = plan_stages(ray.cluster_resources().get("CPU", 1.0), options.actors, options.cpus_per_actor,
                       options.gpus_per_actor)
    # Small blocks (a few batches each) keep results flowing to the writer while the actors embed.
    blocks = max(n_partitions, math.ceil(len(items) / (options.batch_size * BATCHES_PER_BLOCK)))
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), blocks)))
    if plan.prep_inline:
        # No CPU to spare: the same remote arguments as the actors, so Ray Data fuses the stage
        # into them and each actor prepares its own images (stage_plan.py).
        prepared = dataset.map_batches(prepare_images, fn_kwargs=job.prep_arguments(),
                                       batch_size=options.batch_size, batch_format="numpy",
                                       num_cpus=plan.embed_cpus, num_gpus=options.gpus_per_actor or None)
    else:
        # Tasks beside the model actors, preparing the next images while they embed. max_calls=0
        # (Ray's default: a task worker serves any number of tasks, so its recipe stays cached) is
        # an argument only tasks take, so it also keeps Ray Data from fusing the stage into the
        # actors (their remote arguments differ).
        prepared = dataset.map_batches(prepare_images, fn_kwargs=job.prep_arguments(),
                                       batch_size=options.batch_size, batch_format="numpy",
                                       compute=ray.data.TaskPoolStrategy(size=plan.prep_tasks),
                                       num_cpus=1, max_calls=0)
    return prepared.map_batches(
        EmbeddingActor, fn_constructor_kwargs=job.actor_arguments(fingerprint, plan.torch_threads),
        batch_size=options.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=plan.embed_cpus, num_gpus=options.gpus_per_actor or None,
    )


def _build_index(store: VectorStore, index_min_points: int, progress: bool) -> IndexReport:
    """The HNSW index at the finish, once the collection is large enough (blocking, minutes at 100k)."""
    if progress and index_min_points and store.count() >= index_min_points:
        import sys

        print(f"building the search index over {store.count():,} points "
              "(about 1-2 minutes per 100,000 points on 2 cores)...", file=sys.stderr, flush=True)
    return build_index_if_large(store, index_min_points)
