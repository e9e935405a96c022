"""Train a LoRA adapter (or pre-train the tiny base) through Ray Train's TorchTrainer.

The run's folder name is a hash of everything that defines the run except its length, so a
re-run of an interrupted command finds its checkpoints and continues; a different configuration
starts fresh. Ray sets OMP_NUM_THREADS of each worker to its CPU count, so workers ask for the
cores they should use (`cpus_per_worker`) and set torch's thread count to match.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dermground.platform.model.base_weights import ADAPTER_METADATA_FILE, BASE_WEIGHTS_KEY
from dermground.platform.model.prompts import PROMPT_VERSION
from dermground.train.config import PretrainConfig, TrainConfig, WorkerJob
from dermground.train.run_checkpoints import (
    StorageLock,
    hold_storage_lock,
    latest_step,
    remove_unfinished_checkpoints,
)

METADATA_FILE = ADAPTER_METADATA_FILE  # loading reads the base weights digest from it (platform/model/base_weights.py)
CHECKPOINT_FOLDER = "checkpoints"  # inside the output folder: Ray Train's storage for this run


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    steps: int
    resumed_from_step: int | None
    final_loss: float
    loss_curve: list[tuple[int, float]]
    seconds: float
    data_fingerprint: str
    base_fingerprint: str
    n_tuples: int
    hyperparameters: dict = field(default_factory=dict)
    left_out: tuple = ()  # LeftOut (train/training_images.py): training records refused, with field and reason


def default_cpus_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_name(identity: dict) -> str:
    """A stable run name for a configuration (same config -> same folder -> resume)."""
    return "run-" + hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_identity(config: TrainConfig | PretrainConfig, base_dir: str | Path, rows: list[dict]) -> dict:
    """What names a run: its configuration's identity, the mode, the resolved base folder and a hash of the rows."""
    identity = {**config.run_identity(), "mode": config.mode, "base_dir": str(Path(base_dir).resolve())}
    identity["rows"] = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    return identity


def start_line(desc: str, resumed_from: int | None, total: int, run_folder: Path) -> str:
    """The line a run's log opens with: whether it resumed (and from which step) or starts from scratch."""
    if resumed_from is not None:
        return f"{desc}: resuming from step {resumed_from} of {total} (checkpoint in {run_folder})"
    return (f"{desc}: starting from step 0 of {total}; no checkpoint of this configuration in {run_folder.parent} "
            f"(a re-run of the same command resumes from {run_folder})")


def show_progress(bar, item: dict, desc: str, run_folder: Path, progress: bool) -> None:  # noqa: ANN001 - a tqdm bar
    """Show one update from rank 0 (train.loop._Progress: a start, a step or the end) on the driver's bar."""
    bar.total = item["total"]
    if "start" in item:
        # Rate and ETA count this run's steps from its first one: not the steps a resumed run starts
        # with, nor Ray's start-up and the model load before it.
        bar.initial = bar.n = bar.last_print_n = item["start"]
        bar.start_t = bar.last_print_t = time.time()
        if progress:
            bar.write(start_line(desc, item["resumed_from"], item["total"], run_folder), file=sys.stderr)
    if "loss" in item:
        bar.n = item["step"]
        bar.set_postfix(loss=f"{item['loss']:.4f}", refresh=False)
        bar.refresh()


def require_not_past_the_end(run_folder: Path, total: int, max_steps: int | None) -> None:
    """ValueError when the run's checkpoint is already past the `total` steps asked for.

    Steps cannot be undone: such a re-run saved the longer run's adapter while its metadata said
    the shorter --max-steps.
    """
    step = latest_step(run_folder)
    if step is not None and step > total:
        asked = f"--max-steps {max_steps}" if max_steps is not None else "--epochs"
        raise ValueError(f"the checkpoint of this configuration in {run_folder} is at step {step}, past the {total} "
                         f"steps asked for ({asked}); pass --max-steps {step} (or more) to save the adapter of that "
                         f"checkpoint, or another --out to train {total} steps from the start")


def fit(rows: list[dict], base_dir: Path, storage: Path, config: TrainConfig | PretrainConfig, *,
        cpus_per_worker: int | None, ray_address: str | None, progress: bool, desc: str,
        cache_mb: int | None = None, lock: StorageLock | None = None) -> tuple[dict, Path]:
    """Run train_loop_per_worker under a TorchTrainer; returns (final state, folder of the final weights).

    The returned folder is a local copy (under `storage`/_final) of the last checkpoint's weights.
    `cache_mb` bounds each worker's cache of encoded examples (train.loop.ExampleCache; default
    DEFAULT_CACHE_MB); it changes speed and memory, not the result, so it is not part of the run's
    identity and a resumed run may use another value. `lock`: a run lock the caller holds over
    `storage` (e.g. over the whole output folder); without it fit holds the storage folder's own.
    """
    from ray.util.queue import Queue

    from dermground.platform.ray_runtime import ensure_ray
    from dermground.train.cluster_room import require_room
    from dermground.train.loop import DEFAULT_CACHE_MB
    from dermground.train.run_base import require_same_base

    storage = Path(storage).resolve()
    name = run_name(run_identity(config, base_dir, rows))
    own_lock = lock is None
    # Taken before Ray starts, held until the run ends: one live run per folder.
    lock = hold_storage_lock(storage) if lock is None else lock
    try:
        require_same_base(storage / name, Path(base_dir))  # the name holds the base's path, not its weights
        removed = remove_unfinished_checkpoints(storage / name, lock)
        if removed.names:
            print(f"{desc}: {removed.describe(storage / name)}", file=sys.stderr)
        require_not_past_the_end(storage / name, config.total_steps(len(rows)), config.max_steps)
        cpus = cpus_per_worker or default_cpus_per_worker(config.workers)
        ensure_ray(ray_address, ray_data=False)
        waiting = require_room(config.workers, cpus, config.use_gpu, joined=ray_address is not None)
        if waiting:
            print(f"{desc}: {waiting}", file=sys.stderr)
        queue = Queue(actor_options={"num_cpus": 0})
        job = WorkerJob(config=config, base_dir=str(Path(base_dir).resolve()), rows=rows, threads=cpus,
                        cache_mb=DEFAULT_CACHE_MB if cache_mb is None else cache_mb, progress_queue=queue)
        return _run_trainer(job, storage, name, cpus, progress, desc)
    finally:
        if own_lock:
            lock.release()


def _run_trainer(job: WorkerJob, storage: Path, name: str, cpus: int, progress: bool,
                 desc: str) -> tuple[dict, Path]:
    """fit's TorchTrainer run, with the storage folder's lock held."""
    import torch
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty

    from dermground.train.loop import FINAL_DIR, JOB_KEY, STATE_FILE, train_loop_per_worker

    config, queue = job.config, job.progress_queue
    workers = config.workers
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={JOB_KEY: job},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    from dermground.platform.progress import progress_bar

    thread = threading.Thread(target=run, name="ray-train-fit", daemon=True)
    thread.start()
    bar = progress_bar(desc=desc, unit="step", disable=not progress)
    while thread.is_alive() or not queue.empty():
        try:
            item = queue.get(timeout=0.5)
        except Empty:
            continue
        show_progress(bar, item, desc, storage / name, progress)
    bar.close()
    thread.join()
    queue.shutdown()
    if "error" in outcome:
        raise outcome["error"]
    checkpoint = outcome["result"].checkpoint
    if checkpoint is None:
        raise RuntimeError("the training run finished without a checkpoint")
    final_copy = storage / "_final"
    if final_copy.exists():
        shutil.rmtree(final_copy)
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
        shutil.copytree(Path(folder) / FINAL_DIR, final_copy)
    return state, final_copy


def train_adapter(
    data_dir: str | Path,
    base_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    cpus_per_worker: int | None = None,
    max_images: int | None = None,
    ray_address: str | None = None,
    progress: bool = True,
    cache_mb: int | None = None,
) -> TrainResult:
    """LoRA-tune a Qwen2-VL checkpoint on D_tr of `data_dir` as `config` says (default: TrainConfig());
    writes the adapter and its metadata to `out_dir`.

    The keyword arguments change where and how fast it runs, not what it trains (max_images: tests only).
    """
    from dermground.platform.model.base_weights import base_weights_digest
    from dermground.platform.model.fingerprint import fingerprint
    from dermground.platform.model.loading import check_model_dir
    from dermground.train.adapter_swap import check_new_adapter, lock_file, recover_interrupted_swap, swap_in_adapter
    from dermground.train.dataset import build_training_set, tuples_to_rows
    from dermground.train.out_folder import require_swappable_out
    from dermground.train.run_checkpoints import hold_run_lock

    config = config or TrainConfig()
    base = check_model_dir(base_dir)
    if Path(out_dir).resolve() == base.resolve():
        # The adapter's files (adapter_config.json, README.md) would land in the base model's folder:
        # its model card is overwritten and loaders then take the base for an adapter of itself.
        raise ValueError(f"--out {out_dir} is the base model's folder ({base}); write the adapter to a folder of "
                         f"its own, e.g. --out {base.parent / (base.name + '-adapter')}")
    require_swappable_out(out_dir)  # before the image checks and Ray: a read-only --out fails in seconds
    # Every image is checked here, on the driver: the workers get only rows whose image passed.
    training_set = build_training_set(data_dir, w=config.w, seed=config.seed, multi_attribute=config.multi_attribute,
                                      max_images=max_images, model_dir=base, progress=progress)
    hyper = config.hyperparameters()
    out = Path(out_dir).resolve()  # named by its parent and its own name: the staging folder and lock go next to it
    out.mkdir(parents=True, exist_ok=True)
    lock = hold_run_lock(lock_file(out), out)  # over the checkpoints and the swap: one live run per --out
    try:
        for line in recover_interrupted_swap(out):
            print(f"train: {line}", file=sys.stderr)
        started = time.perf_counter()
        state, final = fit(tuples_to_rows(training_set.tuples), base, out / CHECKPOINT_FOLDER, config,
                           cpus_per_worker=cpus_per_worker, ray_address=ray_address, progress=progress, desc="train",
                           cache_mb=cache_mb, lock=lock)
        loss_curve = [(int(s), float(v)) for s, v in state["loss_curve"]]
        result = TrainResult(
            out_dir=Path(out_dir), steps=int(state["step"]), resumed_from_step=state.get("resumed_from"),
            final_loss=loss_curve[-1][1] if loss_curve else float("nan"), loss_curve=loss_curve,
            seconds=time.perf_counter() - started, data_fingerprint=training_set.fingerprint,
            base_fingerprint=fingerprint(base), n_tuples=len(training_set), hyperparameters=hyper,
            left_out=training_set.left_out,
        )

        def write(folder: Path) -> None:
            shutil.copytree(final, folder, dirs_exist_ok=True)
            metadata = {
                "hyperparameters": hyper, "base_model_dir": str(base.resolve()),
                "base_fingerprint": result.base_fingerprint,
                BASE_WEIGHTS_KEY: base_weights_digest(base),  # checked when the adapter is loaded on a base
                "adapter_fingerprint": fingerprint(base, folder),
                "data_dir": str(Path(data_dir).resolve()), "data_fingerprint": training_set.fingerprint,
                "n_images": training_set.n_images, "n_tuples": len(training_set), "prompt_version": PROMPT_VERSION,
                "steps": result.steps, "resumed_from_step": result.resumed_from_step,
                "seconds": round(result.seconds, 2), "loss_curve": loss_curve, "n_left_out": len(training_set.left_out),
                "left_out": [item.as_dict() for item in training_set.left_out],
            }
            (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")

        # Staged next to --out and checked against the base before the old adapter is touched.
        swap_in_adapter(out, write, lambda folder: check_new_adapter(folder, base))
        shutil.rmtree(out / CHECKPOINT_FOLDER / final.name, ignore_errors=True)  # the copy fit made
    finally:
        lock.release()
    return result
