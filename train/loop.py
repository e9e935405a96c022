"""The per-worker training function Ray Train runs (one copy per worker).

Ray hands every worker one `WorkerJob` (train/config.py): the run's typed configuration
(TrainConfig or PretrainConfig, whose attributes the names below refer to), the base model
folder and the training rows.

Each worker loads the base model, wraps it with LoRA (mode "lora") or trains every weight (mode
"full", the tiny-model pre-training), and walks the same globally shuffled order of tuples,
taking its own share of each global batch. Optimiser: AdamW; schedule: linear warm-up then
cosine decay to zero over the run. Rank 0 writes a checkpoint every `checkpoint_every` steps and
at the end (trainable weights, optimiser, scheduler, step, RNG states, loss curve); a re-run of
the same configuration picks up the latest one and continues from its step. With
`augment_views` V > 1 each use of a tuple shows its image in one of its first V turns and mirror
images (platform/model/views.py), drawn per (seed, epoch, tuple): the attributes do not change
with the view, so the model sees up to V different pictures of each lesion with the same answer.
`precision` "bf16" runs the forward pass under bfloat16 autocast (a LoRA base is stored in
bfloat16, trained weights stay float32); `gradient_checkpointing` recomputes each block's
activations in the backward pass (memory for time, same maths). `number_loss` w > 0 adds w x the
number token loss on the answers' digits (train/number_loss.py) to the cross-entropy.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dermground.train.config import PretrainConfig, TrainConfig, WorkerJob

STATE_FILE = "state.pt"
FINAL_DIR = "final"  # inside the last checkpoint: the adapter (lora) or the whole model (full)
PROGRESS_INTERVAL_S = 0.25  # how often rank 0 sends the CLI's progress bar an update
DEFAULT_CACHE_MB = 2048  # encoded examples kept per worker (ExampleCache)
REPORT_EVERY = 10  # steps averaged into one point of the loss curve
MAX_GRAD_NORM = 1.0  # gradient clipping
JOB_KEY = "job"  # the one key of Ray's train_loop_config: the WorkerJob


# What the loop reads: `mode` "lora" (LoRA on a frozen base) or "full" (every weight: the tiny model's pre-training).
LoopConfig = TrainConfig | PretrainConfig


def schedule_lambda(total_steps: int, warmup_steps: int):  # noqa: ANN201
    """Multiplier of the peak lr at a step: linear warm-up, then cosine decay to 0 at total_steps."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The global order of tuple indices in one epoch (identical on every worker)."""
    order = list(range(n))
    random.Random(f"{seed}:epoch:{epoch}").shuffle(order)
    return order


def epoch_views(n: int, seed: int, epoch: int, views: int) -> list[int]:
    """The dihedral view each tuple's image is shown in during one epoch (all 0 when views is 1)."""
    if views <= 1:
        return [0] * n
    draw = random.Random(f"{seed}:views:{epoch}")
    return [draw.randrange(views) for _ in range(n)]


def batch_share(order: list[int], in_epoch: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Tuple indices worker `rank` of `world` trains on in batch `in_epoch` of an epoch's `order`.

    An epoch's last batch (or a whole data set) smaller than the worker count would leave a worker
    with nothing to run, and DDP's gradient all-reduce then waits for it forever. Such a batch is
    topped up with the epoch's first tuples, as torch's DistributedSampler pads; batches that gave
    every worker a share are unchanged.
    """
    batch = order[in_epoch * batch_size:(in_epoch + 1) * batch_size]
    if len(batch) < world:
        batch = batch + [order[i % len(order)] for i in range(world - len(batch))]
    return batch[rank::world]


class ExampleCache:
    """Encoded training examples by tuple index, up to a memory budget.

    The processor's work on an example (decode, resize, normalise, patchify, tokenise) is the
    same in every epoch: ~27 of a ~100 ms tiny-model step when redone each time (2 threads). Patches are
    shared by the W examples of one image. Past the budget new examples are encoded on every use
    instead of kept (a real data set does not fit in memory; the demo's takes ~0.6 GB).
    """

    def __init__(self, collate, budget_bytes: int) -> None:  # noqa: ANN001 - an AnswerOnlyCollator
        self._collate = collate
        self._budget = budget_bytes
        self._examples: dict[int, Any] = {}
        self._pixels: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # image_ref -> (patches, grid)
        self.used_bytes = 0

    def get(self, index: int, item) -> Any:  # noqa: ANN001 - a TrainingTuple; returns an EncodedExample
        cached = self._examples.get(index)
        if cached is not None:
            return cached
        shared = self._pixels.get(item.image_ref)
        if shared is not None:  # another question of a kept image: tokenise only
            encoded = self._collate.encode_text(item.question, item.answer, *shared)
        else:
            from dermground.platform.image_sources import load_image_bytes
            from dermground.platform.images import decode_image

            encoded = self._collate.encode(decode_image(load_image_bytes(item.image_ref)), item.question, item.answer)
        size = encoded.nbytes - (encoded.pixel_values.nbytes if shared is not None else 0)
        if self.used_bytes + size <= self._budget:
            self._examples[index] = encoded
            self._pixels.setdefault(item.image_ref, (encoded.pixel_values, encoded.image_grid_thw))
            self.used_bytes += size
        return encoded


def training_dtype(config: LoopConfig) -> torch.dtype:
    """The dtype the base weights are loaded in for a run with this config.

    bf16 LoRA keeps the frozen base in bfloat16 (half the memory, no cast per step); full-parameter
    training keeps float32 weights; whatever is trained is float32 either way (prepare_for_training).
    """
    bf16_base = config.precision == "bf16" and config.mode == "lora"
    return torch.bfloat16 if bf16_base else torch.float32


def prepare_for_training(model: torch.nn.Module, config: LoopConfig) -> torch.nn.Module:
    """A loaded Qwen2-VL made ready to train as `config` says: recomputation, LoRA or full, float32 trainables."""
    from dermground.train.lora import apply_lora, float32_trainable

    if config.gradient_checkpointing:
        # Non-reentrant: works with a frozen embedding layer (no input that needs a gradient).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.mode == "lora":
        modules = list(config.modules_to_save) if config.modules_to_save else None
        model = apply_lora(model, config.rank, config.alpha, config.dropout, modules)
    else:
        model.requires_grad_(True)
        if config.freeze_vision:  # full-parameter training of everything but the vision tower
            model.model.visual.requires_grad_(False)
    float32_trainable(model)
    model.train()
    return model


def _build_model(config: LoopConfig, base_dir: str | Path) -> tuple[torch.nn.Module, Any]:
    from dermground.platform.model.loading import load_backbone

    backbone = load_backbone(base_dir, device="cpu", dtype=training_dtype(config), for_training=True)
    return prepare_for_training(backbone.core, config), backbone.processor


def _trainable_state(model: torch.nn.Module, mode: str) -> dict[str, torch.Tensor]:
    if mode == "lora":
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _load_trainable_state(model: torch.nn.Module, mode: str, state: dict[str, torch.Tensor]) -> None:
    if mode == "lora":
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        unexpected = list(getattr(result, "unexpected_keys", []))
        if unexpected:
            raise RuntimeError(f"checkpoint has weights the model does not: {unexpected[:5]}")
    else:
        model.load_state_dict(state)


@dataclass
class _Worker:
    """One worker's model, optimiser and place in the run (what a step and a checkpoint need)."""

    config: LoopConfig
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module  # DDP-wrapped when world > 1
    core: torch.nn.Module  # the unwrapped model: what is saved
    processor: Any
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps: int
    step: int = 0
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: int | None = None


def _set_up(job: WorkerJob, steps: int) -> _Worker:
    """Seed, build the model (DDP/device when asked), optimiser and schedule; resume from Ray's checkpoint."""
    import ray.train

    config = job.config
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if job.threads > 0:
        torch.set_num_threads(job.threads)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model, processor = _build_model(config, job.base_dir)
    device = torch.device("cpu")
    if world > 1 or config.use_gpu:
        import ray.train.torch as rtt

        device = rtt.get_device()
        model = rtt.prepare_model(model)  # DDP when world > 1; moves to the worker's device
    core = model.module if hasattr(model, "module") and world > 1 else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_lambda(steps, config.warmup_steps))
    worker = _Worker(config, rank, world, device, model, core, processor, params, optimizer, scheduler, steps)
    _resume(worker)
    return worker


def _resume(worker: _Worker) -> None:
    """Continue from the latest checkpoint of this run, if Ray has one."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
    _load_trainable_state(worker.core, worker.config.mode, state["trainable"])
    worker.optimizer.load_state_dict(state["optimizer"])
    worker.scheduler.load_state_dict(state["scheduler"])
    # The schedule follows this run's length (a re-run may ask for more steps).
    worker.scheduler.lr_lambdas[0] = schedule_lambda(worker.steps, worker.config.warmup_steps)
    worker.step, worker.loss_curve, worker.resumed_from = state["step"], state["loss_curve"], state["step"]
    torch.set_rng_state(state["torch_rng"])


def _save(worker: _Worker, final: bool) -> None:
    """Report the step to Ray; rank 0 attaches a checkpoint (and, at the end, the trained weights)."""
    import ray.train
    from ray.train import Checkpoint

    metrics = {"step": worker.step, "loss": worker.loss_curve[-1][1] if worker.loss_curve else float("nan"),
               "resumed_from": worker.resumed_from if worker.resumed_from is not None else -1}
    if worker.rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"trainable": _trainable_state(worker.core, worker.config.mode),
                    "optimizer": worker.optimizer.state_dict(), "scheduler": worker.scheduler.state_dict(),
                    "step": worker.step, "loss_curve": worker.loss_curve, "torch_rng": torch.get_rng_state(),
                    "resumed_from": worker.resumed_from},
                   Path(folder) / STATE_FILE)
        if final:
            worker.core.save_pretrained(Path(folder) / FINAL_DIR)
            if worker.config.mode == "full":
                worker.processor.save_pretrained(Path(folder) / FINAL_DIR)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


class _Batches:
    """This worker's share of each global batch, as padded model inputs, in the run's shuffled order and views."""

    def __init__(self, job: WorkerJob, worker: _Worker) -> None:
        from dermground.train.collator import AnswerOnlyCollator
        from dermground.train.dataset import rows_to_tuples

        self._config, self._worker = job.config, worker
        self.tuples = rows_to_tuples(job.rows)
        self._collate = AnswerOnlyCollator(worker.processor)
        self._examples = ExampleCache(self._collate, int(job.cache_mb) * 2**20)
        image_processor = worker.processor.image_processor
        self._merge, self._temporal = image_processor.merge_size, image_processor.temporal_patch_size
        self._per_epoch = self._config.steps_per_epoch(len(self.tuples))
        self._epoch, self._order, self._views = -1, [], []

    def mine(self, step: int) -> list[int]:
        """Tuple indices this worker trains on at `step` (its slice of the global batch)."""
        epoch, in_epoch = divmod(step, self._per_epoch)
        if epoch != self._epoch:  # shuffling every step cost ~5 ms of a ~90 ms tiny-model step
            n, seed = len(self.tuples), self._config.seed
            self._epoch, self._order = epoch, epoch_order(n, seed, epoch)
            self._views = epoch_views(n, seed, epoch, self._config.augment_views)
        return batch_share(self._order, in_epoch, self._config.batch_size, self._worker.rank, self._worker.world)

    def inputs(self, chunk: list[int]) -> dict[str, Any]:
        """The padded batch of these tuples (each in this epoch's view of its image) on the worker's device."""
        from dermground.train.collator import answer_window

        shown = [self._examples.get(i, self.tuples[i]).in_view(self._views[i], self._merge, self._temporal)
                 for i in chunk]
        batch = answer_window(self._collate.pad(shown))
        return {k: v.to(self._worker.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _train_step(worker: _Worker, batches: _Batches, digit_ids: torch.Tensor | None) -> float:
    """One optimiser step on this worker's share of the global batch (micro-batched); its loss."""
    from dermground.train.number_loss import number_token_loss

    config = worker.config
    mine = batches.mine(worker.step)
    micro = config.micro_batch()
    worker.optimizer.zero_grad(set_to_none=True)
    batch_loss = 0.0
    for start in range(0, len(mine), micro):
        chunk = mine[start:start + micro]
        batch = batches.inputs(chunk)
        with torch.autocast(worker.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            output = worker.model(**batch, use_cache=False)
        loss = output.loss
        if config.number_loss:
            loss = loss + config.number_loss * number_token_loss(output.logits, batch["labels"], digit_ids)
        loss = loss * (len(chunk) / len(mine))
        loss.backward()
        batch_loss += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(worker.params, MAX_GRAD_NORM)
    worker.optimizer.step()
    worker.scheduler.step()
    worker.step += 1
    return batch_loss


class _Progress:
    """Rank 0's updates to the CLI's progress bar: at most a few per second (a put is a call to an actor)."""

    def __init__(self, queue: Any, worker: _Worker) -> None:
        self._queue = queue if worker.rank == 0 else None
        self._worker, self._first_step = worker, worker.step
        self._started, self._last = time.perf_counter(), 0.0
        if self._queue is not None:  # where the run starts: a log says "resumed" or "from scratch" before it trains
            self._queue.put({"start": worker.step, "total": worker.steps, "resumed_from": worker.resumed_from})

    def step(self, loss: float) -> None:
        worker, now = self._worker, time.perf_counter()
        if self._queue is None or (now - self._last < PROGRESS_INTERVAL_S and worker.step != worker.steps):
            return
        self._last = now
        rate = (worker.step - self._first_step) / max(1e-9, now - self._started)
        self._queue.put({"step": worker.step, "total": worker.steps, "loss": loss, "steps_per_s": rate})

    def done(self) -> None:
        if self._queue is not None:
            self._queue.put({"done": True, "step": self._worker.step, "total": self._worker.steps})


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point; `loop_config` is {JOB_KEY: WorkerJob} built by dermground.train.ray_train.fit."""
    from dermground.train.number_loss import digit_token_ids

    job: WorkerJob = loop_config[JOB_KEY]
    config = job.config
    worker = _set_up(job, config.total_steps(len(job.rows)))
    batches = _Batches(job, worker)
    # Moved to the device once, not per step.
    digit_ids = digit_token_ids(worker.processor.tokenizer).to(worker.device) if config.number_loss else None
    progress = _Progress(job.progress_queue, worker)
    window: list[float] = []
    while worker.step < worker.steps:
        loss = _train_step(worker, batches, digit_ids)
        window.append(loss)
        if worker.step % REPORT_EVERY == 0 or worker.step == worker.steps:
            worker.loss_curve.append((worker.step, sum(window) / len(window)))
            window = []
        progress.step(loss)
        if worker.step < worker.steps and config.checkpoint_every and worker.step % config.checkpoint_every == 0:
            _save(worker, final=False)
    _save(worker, final=True)
    progress.done()
