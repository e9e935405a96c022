"""The per-worker training function Ray Train runs (one copy per worker).

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
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
FINAL_DIR = "final"  # inside the last checkpoint: the adapter (lora) or the whole model (full)
PROGRESS_INTERVAL_S = 0.25  # how often rank 0 sends the CLI's progress bar an update
DEFAULT_CACHE_MB = 2048  # encoded examples kept per worker (ExampleCache)


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


def total_steps(n_tuples: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    per_epoch = math.ceil(n_tuples / batch_size)
    return per_epoch * epochs if max_steps is None else min(max_steps, per_epoch * epochs)


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
            from dermground.ingest.reader import decode_image, load_image_bytes

            encoded = self._collate.encode(decode_image(load_image_bytes(item.image_ref)), item.question, item.answer)
        size = encoded.nbytes - (encoded.pixel_values.nbytes if shared is not None else 0)
        if self.used_bytes + size <= self._budget:
            self._examples[index] = encoded
            self._pixels.setdefault(item.image_ref, (encoded.pixel_values, encoded.image_grid_thw))
            self.used_bytes += size
        return encoded


def training_dtype(config: dict) -> torch.dtype:
    """The dtype the base weights are loaded in for a run with this config.

    bf16 LoRA keeps the frozen base in bfloat16 (half the memory, no cast per step); full-parameter
    training keeps float32 weights; whatever is trained is float32 either way (prepare_for_training).
    """
    bf16_base = config.get("precision", "fp32") == "bf16" and config["mode"] == "lora"
    return torch.bfloat16 if bf16_base else torch.float32


def prepare_for_training(model: torch.nn.Module, config: dict) -> torch.nn.Module:
    """A loaded Qwen2-VL made ready to train as `config` says: recomputation, LoRA or full, float32 trainables."""
    from dermground.train.lora import apply_lora, float32_trainable

    if config.get("gradient_checkpointing"):
        # Non-reentrant: works with a frozen embedding layer (no input that needs a gradient).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config["mode"] == "lora":
        model = apply_lora(model, config["rank"], config["alpha"], config["dropout"], config.get("modules_to_save"))
    else:
        model.requires_grad_(True)
        if config.get("freeze_vision"):  # full-parameter training of everything but the vision tower
            model.model.visual.requires_grad_(False)
    float32_trainable(model)
    model.train()
    return model


def _build_model(config: dict) -> tuple[torch.nn.Module, Any]:
    from dermground.platform.model.loading import load_backbone

    backbone = load_backbone(config["base_dir"], device="cpu", dtype=training_dtype(config), for_training=True)
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


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; `config` is built by dermground.train.ray_train."""
    import ray.train
    from ray.train import Checkpoint

    from dermground.train.collator import AnswerOnlyCollator, answer_window
    from dermground.train.dataset import rows_to_tuples
    from dermground.train.number_loss import digit_token_ids, number_token_loss

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    threads = int(config.get("threads") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(config["seed"])
    random.seed(config["seed"])

    model, processor = _build_model(config)
    mode = config["mode"]
    device = torch.device("cpu")
    if world > 1 or config.get("use_gpu"):
        import ray.train.torch as rtt

        device = rtt.get_device()
        model = rtt.prepare_model(model)  # DDP when world > 1; moves to the worker's device
    core = model.module if hasattr(model, "module") and world > 1 else model
    collate = AnswerOnlyCollator(processor)
    tuples = rows_to_tuples(config["rows"])
    batch_size, epochs = config["batch_size"], config["epochs"]
    per_epoch = math.ceil(len(tuples) / batch_size)
    steps = total_steps(len(tuples), batch_size, epochs, config.get("max_steps"))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config["lr"], weight_decay=config.get("weight_decay", 0.0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_lambda(steps, config.get("warmup_steps", 0)))
    step, loss_curve, resumed_from = 0, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
        _load_trainable_state(core, mode, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # The schedule follows this run's length (a re-run may ask for more steps).
        scheduler.lr_lambdas[0] = schedule_lambda(steps, config.get("warmup_steps", 0))
        step, loss_curve, resumed_from = state["step"], state["loss_curve"], state["step"]
        torch.set_rng_state(state["torch_rng"])

    examples = ExampleCache(collate, int(config.get("cache_mb", DEFAULT_CACHE_MB)) * 2**20)
    queue = config.get("progress_queue")
    micro = config.get("micro_batch_size") or batch_size
    checkpoint_every = config.get("checkpoint_every") or 0
    report_every = max(1, config.get("report_every", 10))
    window: list[float] = []
    started = time.perf_counter()
    first_step = step
    order_epoch, order, views = -1, [], []
    augment = int(config.get("augment_views") or 1)
    bf16 = config.get("precision", "fp32") == "bf16"
    number_weight = float(config.get("number_loss") or 0.0)
    digit_ids = digit_token_ids(processor.tokenizer).to(device) if number_weight else None  # moved once, not per step
    merge, temporal = processor.image_processor.merge_size, processor.image_processor.temporal_patch_size

    def shown(index: int):  # noqa: ANN202 - the tuple's EncodedExample in this epoch's view of its image
        return examples.get(index, tuples[index]).in_view(views[index], merge, temporal)
    last_progress = 0.0

    def save(final: bool) -> None:
        metrics = {"step": step, "loss": loss_curve[-1][1] if loss_curve else float("nan"),
                   "resumed_from": resumed_from if resumed_from is not None else -1}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"trainable": _trainable_state(core, mode), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": step, "loss_curve": loss_curve,
                        "torch_rng": torch.get_rng_state(), "resumed_from": resumed_from},
                       Path(folder) / STATE_FILE)
            if final:
                core.save_pretrained(Path(folder) / FINAL_DIR)
                if mode == "full":
                    processor.save_pretrained(Path(folder) / FINAL_DIR)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    while step < steps:
        epoch, in_epoch = divmod(step, per_epoch)
        if epoch != order_epoch:  # shuffling every step cost ~5 ms of a ~90 ms tiny-model step
            order_epoch, order = epoch, epoch_order(len(tuples), config["seed"], epoch)
            views = epoch_views(len(tuples), config["seed"], epoch, augment)
        global_batch = order[in_epoch * batch_size:(in_epoch + 1) * batch_size]
        mine = global_batch[rank::world]
        optimizer.zero_grad(set_to_none=True)
        batch_loss = 0.0
        for start in range(0, len(mine), micro):
            chunk = mine[start:start + micro]
            batch = answer_window(collate.pad([shown(i) for i in chunk]))
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                output = model(**batch, use_cache=False)
            loss = output.loss
            if number_weight:
                loss = loss + number_weight * number_token_loss(output.logits, batch["labels"], digit_ids)
            loss = loss * (len(chunk) / len(mine))
            loss.backward()
            batch_loss += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, config.get("max_grad_norm", 1.0))
        optimizer.step()
        scheduler.step()
        step += 1
        window.append(batch_loss)
        if step % report_every == 0 or step == steps:
            mean_loss = sum(window) / len(window)
            loss_curve.append((step, mean_loss))
            window = []
        now = time.perf_counter()
        # A put is a blocking call to the queue actor: at most a few per second, not one per step.
        if rank == 0 and queue is not None and (now - last_progress >= PROGRESS_INTERVAL_S or step == steps):
            last_progress = now
            rate = (step - first_step) / max(1e-9, now - started)
            queue.put({"step": step, "total": steps, "loss": batch_loss, "steps_per_s": rate})
        if step < steps and checkpoint_every and step % checkpoint_every == 0:
            save(final=False)
    save(final=True)
    if rank == 0 and queue is not None:
        queue.put({"done": True, "step": step, "total": steps})
