"""Typed run configuration of LoRA training and of the tiny model's pre-training.

`TrainConfig` and `PretrainConfig` are written once here: the CLI builds one, Ray Train carries it
to every worker inside a `WorkerJob`, the loop (train/loop.py) reads its attributes, and its
`hyperparameters()` are saved beside the checkpoint. Cross-field checks live in `__post_init__`
and name the command-line flags; derived numbers (steps per epoch, run length, micro batch) are
methods. `run_identity()` is what names a run's checkpoint folder, so a re-run of the same command
resumes; it is kept byte-for-byte what it was when these settings were a dict, so runs named
before this module existed still resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from dermground.platform.settings import MAX_VIEWS

# fp32: float32 throughout (the default; fastest on CPUs). bf16: bfloat16 autocast, LoRA's frozen base
# stored in bfloat16 (1.5-3.3x faster steps on an H100 at Qwen2-VL-2B shapes, docs/BENCHMARKS.md).
PRECISIONS = ("fp32", "bf16")
MAX_W = 16  # attributes that can be sampled per image (the 16 attribute questions)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _require_seed(seed: int) -> None:
    # torch.manual_seed's range: a larger seed failed inside a Ray worker, after Ray had started, with a traceback.
    _require(-(2**63) <= seed < 2**64, f"--seed must be between {-(2**63)} and {2**64 - 1}, got {seed}")


class _Schedule:
    """Derived numbers of a run, shared by both configurations (fields: epochs, batch_size, max_steps)."""

    epochs: int
    batch_size: int
    max_steps: int | None
    micro_batch_size: int | None

    def steps_per_epoch(self, n_tuples: int) -> int:
        """Optimiser steps in one pass over `n_tuples` examples."""
        return math.ceil(n_tuples / self.batch_size)

    def total_steps(self, n_tuples: int) -> int:
        """The run's length in optimiser steps: all epochs, cut at max_steps."""
        every = self.steps_per_epoch(n_tuples) * self.epochs
        return every if self.max_steps is None else min(self.max_steps, every)

    def micro_batch(self) -> int:
        """Examples per forward/backward pass on one worker (gradient accumulation below its share)."""
        return self.micro_batch_size or self.batch_size


@dataclass(frozen=True)
class TrainConfig(_Schedule):
    """LoRA fine-tuning of the backbone on D_tr (`dermground train`)."""

    mode: ClassVar[str] = "lora"
    weight_decay: ClassVar[float] = 0.0
    freeze_vision: ClassVar[bool] = False

    epochs: int = 1
    """Passes over D_tr."""
    batch_size: int = 16
    """Global batch size (a multiple of --workers)."""
    micro_batch_size: int | None = None
    """Per-worker micro batch (gradient accumulation); None: the worker's whole share."""
    lr: float = 1e-4
    """Peak learning rate (AdamW, linear warm-up then cosine decay to 0)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    rank: int = 8
    """LoRA rank."""
    alpha: int = 16
    """LoRA alpha."""
    dropout: float = 0.05
    """LoRA dropout."""
    modules_to_save: tuple[str, ...] | None = None
    """Modules trained fully besides LoRA (peft modules_to_save), e.g. ("lm_head",)."""
    w: int = 5
    """Attributes sampled per training image (W)."""
    seed: int = 0
    """Seed of the attribute sampling, data order and initialisation."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (not part of the run's name: a re-run may go further)."""
    checkpoint_every: int = 100
    """Checkpoint every N steps (0: only at the end)."""
    multi_attribute: bool = False
    """Also train one 2-3 attribute question per image."""
    augment_views: int = 1
    """Show each image in one of its first N turns and mirror images (1: the images as given)."""
    precision: str = "fp32"
    """fp32, or bf16: bfloat16 autocast with the frozen base stored in bfloat16."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (memory for time, same result)."""
    number_loss: float = 0.0
    """Weight of the number token loss on the answers' digits added to the cross-entropy (0: none)."""
    workers: int = 1
    """Ray Train workers (DDP when more than one)."""
    use_gpu: bool = False
    """One GPU per worker."""

    def __post_init__(self) -> None:
        if self.modules_to_save is not None:  # a list from a caller or a saved config: stored as a tuple (frozen)
            object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save) or None)
        _require(self.epochs >= 1 and self.batch_size >= 1, "--epochs and --batch-size must be >= 1")
        _require(self.workers >= 1, f"--workers must be >= 1, got {self.workers}")
        _require(self.batch_size % self.workers == 0,
                 f"--batch-size {self.batch_size} must be a multiple of --workers {self.workers}")
        _require(self.micro_batch_size is None or self.micro_batch_size >= 1,
                 f"--micro-batch-size must be >= 1, got {self.micro_batch_size}")
        _require(self.lr > 0 and math.isfinite(self.lr), f"--lr must be a finite number > 0, got {self.lr}")
        _require(self.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        _require(self.rank >= 1 and self.alpha >= 1, "--rank and --alpha must be >= 1")
        _require(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        _require(1 <= self.w <= MAX_W, f"--w must be between 1 and {MAX_W}, got {self.w}")
        _require(self.max_steps is None or self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}")
        _require(self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        _require(1 <= self.augment_views <= MAX_VIEWS,
                 f"--augment-views must be between 1 (the images as given) and {MAX_VIEWS}, got {self.augment_views}")
        _require(self.precision in PRECISIONS,
                 f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _require(self.number_loss >= 0 and math.isfinite(self.number_loss),
                 f"--number-loss must be a finite weight >= 0 (0: cross-entropy only), got {self.number_loss}")
        _require_seed(self.seed)

    def hyperparameters(self) -> dict[str, Any]:
        """The JSON form saved beside the adapter (dermground_adapter.json's "hyperparameters")."""
        return {"epochs": self.epochs, "batch_size": self.batch_size, "micro_batch_size": self.micro_batch_size,
                "lr": self.lr, "warmup_steps": self.warmup_steps, "rank": self.rank, "alpha": self.alpha,
                "dropout": self.dropout,
                "modules_to_save": list(self.modules_to_save) if self.modules_to_save else None, "w": self.w,
                "seed": self.seed, "max_steps": self.max_steps, "checkpoint_every": self.checkpoint_every,
                "multi_attribute": self.multi_attribute, "augment_views": self.augment_views,
                "precision": self.precision, "gradient_checkpointing": self.gradient_checkpointing,
                "number_loss": self.number_loss, "workers": self.workers, "use_gpu": self.use_gpu}

    def run_identity(self) -> dict[str, Any]:
        """What names the run (with the mode, base and rows): not its length, checkpointing or speed settings."""
        identity = {k: v for k, v in self.hyperparameters().items()
                    if k not in ("w", "multi_attribute", "workers", "use_gpu", "max_steps", "checkpoint_every",
                                 "gradient_checkpointing")}
        # Defaults of flags added later are left out, so runs named before those flags existed keep their names.
        if identity["precision"] == "fp32":
            del identity["precision"]
        if not identity["number_loss"]:
            del identity["number_loss"]
        return identity


@dataclass(frozen=True)
class PretrainConfig(_Schedule):
    """Generic image-statistics pre-training of the tiny random model (`dermground pretrain`)."""

    mode: ClassVar[str] = "full"
    weight_decay: ClassVar[float] = 0.0
    micro_batch_size: ClassVar[int | None] = None
    augment_views: ClassVar[int] = 1
    precision: ClassVar[str] = "fp32"
    number_loss: ClassVar[float] = 0.0
    gradient_checkpointing: ClassVar[bool] = False

    epochs: int = 1
    """Passes over the questions."""
    batch_size: int = 16
    """Global batch size (also the tower stage's)."""
    lr: float = 1e-3
    """Peak learning rate (warm-up then cosine; the tower stage's one-cycle peak)."""
    warmup_steps: int = 50
    """Linear warm-up steps of the question stage."""
    questions_per_image: int = 10
    """Image-statistics questions asked per image."""
    seed: int = 0
    """Seed of the question sampling, data order and initialisation."""
    max_steps: int | None = None
    """Stop the question stage after this many steps."""
    max_images: int | None = None
    """Use only the first N training-split images (tests)."""
    checkpoint_every: int = 200
    """Checkpoint every N steps (0: only at the end)."""
    tower_steps: int = 0
    """First train the vision tower alone for this many steps (0: skip that stage)."""
    workers: int = 1
    """Ray Train workers."""
    use_gpu: bool = False
    """One GPU per worker."""

    def __post_init__(self) -> None:
        from dermground.train.pretrain import STATISTICS

        _require(self.epochs >= 1 and self.batch_size >= 1, "--epochs and --batch-size must be >= 1")
        _require(self.workers >= 1, f"--workers must be >= 1, got {self.workers}")
        _require(self.lr > 0 and math.isfinite(self.lr), f"--lr must be a finite number > 0, got {self.lr}")
        _require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(1 <= self.questions_per_image <= len(STATISTICS),
                 f"--questions-per-image must be between 1 and {len(STATISTICS)}, got {self.questions_per_image}")
        _require(self.max_steps is None or self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}")
        _require(self.max_images is None or self.max_images >= 1, f"max_images must be >= 1, got {self.max_images}")
        _require(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        _require(self.tower_steps >= 0, f"--tower-steps must be 0 (skip) or more, got {self.tower_steps}")
        _require_seed(self.seed)

    @property
    def freeze_vision(self) -> bool:
        """After a tower stage the question stage leaves the tower as that stage left it.

        Training every weight on the questions was measured to erase most of what the tower had
        learned (docs/EVALUATION.md).
        """
        return self.tower_steps > 0

    def hyperparameters(self) -> dict[str, Any]:
        """The JSON form saved beside the model (dermground_pretrain.json's "hyperparameters")."""
        hyper: dict[str, Any] = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                                 "warmup_steps": self.warmup_steps, "seed": self.seed, "max_steps": self.max_steps,
                                 "checkpoint_every": self.checkpoint_every, "weight_decay": self.weight_decay}
        if self.tower_steps:  # only when used, so runs named before the tower stage existed keep their names
            hyper["tower_steps"], hyper["freeze_vision"] = self.tower_steps, self.freeze_vision
        return hyper

    def tower_hyperparameters(self) -> dict[str, Any]:
        """What defines the tower stage (its saved form; a finished stage with the same is reused)."""
        return {"steps": self.tower_steps, "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed,
                "max_images": self.max_images}

    def run_identity(self) -> dict[str, Any]:
        """What names the question stage's run (with the mode, base and rows): not its length or checkpointing."""
        return {k: v for k, v in self.hyperparameters().items() if k not in ("max_steps", "checkpoint_every")}


@dataclass(frozen=True)
class WorkerJob:
    """Everything a Ray Train worker needs: the run's configuration and where and on what to run it."""

    config: TrainConfig | PretrainConfig
    """The run's hyper-parameters (its `mode` says LoRA or full-parameter training)."""
    base_dir: str
    """Resolved folder of the model to start from."""
    rows: list[dict]
    """The training tuples (train.dataset.tuples_to_rows)."""
    threads: int
    """torch threads per worker (its CPU share)."""
    cache_mb: int
    """Memory per worker for encoded examples (speed only)."""
    progress_queue: Any = None
    """A ray.util.queue.Queue for rank 0's progress, or None."""
