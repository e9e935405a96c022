"""Generic pre-training of the tiny random model (tests and the demo only; never a real checkpoint).

A real Qwen2-VL arrives instruction-tuned: it can look at an image and answer with a number. The
tiny local model is random, so "untuned" would mean "knows nothing". This module gives it generic
visual/number skills first, on questions that are NOT the 16 lesion attributes: statistics of the
image's pixels (computed here with numpy from the decoded RGB image; grey = ITU-R 601 luma, 0-100):

    mean brightness, mean red / green / blue, brightness spread, mean brightness of the centre,
    centre-vs-border darkness, centre-vs-border redness, brightness spread along the border,
    percentage of pixels much darker than the border.

"Centre" = the disc of radius 1/4 of the side around the image centre; "border" = the outer 1/8
frame. These are full-parameter updates of every weight (vision encoder, decoder, lm_head),
through the same Ray Train loop as LoRA, and the result is saved as a new base model folder
(weights + tokenizer + image processor) that `load_backbone` loads like any checkpoint.

With `tower_steps` > 0 a first stage (`train.tower_pretrain`) trains the vision tower alone to
regress local colour and texture statistics of every image token; the question stage then trains
every weight except the vision tower's.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dermground.platform.crash_points import maybe_crash
from dermground.train.config import PretrainConfig
from dermground.train.model_swap import PRETRAIN_METADATA_FILE


@dataclass(frozen=True)
class ImageStatistic:
    """A generic question about an image and how to compute its answer from the pixels."""

    key: str
    question: str
    decimals: int
    compute: Callable[[dict[str, np.ndarray]], float]


def _regions(rgb: np.ndarray) -> dict[str, np.ndarray]:
    rgb = rgb.astype(np.float64)
    grey = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0 * 100.0
    h, w = grey.shape
    yy, xx = np.mgrid[0:h, 0:w]
    radius = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    centre = radius <= min(h, w) / 4
    frame = max(1, min(h, w) // 8)
    border = np.zeros_like(centre)
    border[:frame], border[-frame:], border[:, :frame], border[:, -frame:] = True, True, True, True
    return {"rgb": rgb, "grey": grey, "centre": centre, "border": border}


def _redness(r: dict[str, np.ndarray], mask: np.ndarray) -> float:
    return float((r["rgb"][..., 0][mask] - r["rgb"][..., 1][mask]).mean())


STATISTICS: tuple[ImageStatistic, ...] = (
    ImageStatistic("mean_brightness", "What is the mean brightness of the image, from 0 to 100?", 1,
                   lambda r: float(r["grey"].mean())),
    ImageStatistic("mean_red", "What is the mean red value of the image?", 1, lambda r: float(r["rgb"][..., 0].mean())),
    ImageStatistic("mean_green", "What is the mean green value of the image?", 1,
                   lambda r: float(r["rgb"][..., 1].mean())),
    ImageStatistic("mean_blue", "What is the mean blue value of the image?", 1, lambda r: float(r["rgb"][..., 2].mean())),
    ImageStatistic("brightness_spread", "How much does the brightness vary across the image?", 2,
                   lambda r: float(r["grey"].std())),
    ImageStatistic("centre_brightness", "What is the mean brightness of the centre of the image?", 1,
                   lambda r: float(r["grey"][r["centre"]].mean())),
    ImageStatistic("centre_darkness", "How much darker is the centre of the image than its border?", 2,
                   lambda r: float(r["grey"][r["border"]].mean() - r["grey"][r["centre"]].mean())),
    ImageStatistic("centre_redness", "How much redder is the centre of the image than its border?", 2,
                   lambda r: _redness(r, r["centre"]) - _redness(r, r["border"])),
    ImageStatistic("border_spread", "How much does the brightness vary along the border of the image?", 2,
                   lambda r: float(r["grey"][r["border"]].std())),
    ImageStatistic("dark_percentage", "What percentage of the image is much darker than its border?", 1,
                   lambda r: float((r["grey"] < r["grey"][r["border"]].mean() - 10.0).mean() * 100.0)),
)


def image_statistics(rgb: np.ndarray) -> dict[str, float]:
    """Every statistic of an RGB uint8 image [h, w, 3], by key."""
    regions = _regions(rgb)
    return {s.key: s.compute(regions) for s in STATISTICS}


def _format(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return "0" + text[2:] if text.startswith("-0") and float(text) == 0 else text


def build_pretraining_rows(data_dir: str | Path, questions_per_image: int = len(STATISTICS), seed: int = 0,
                           max_images: int | None = None, *, model_dir: str | Path | None = None,
                           left_out: list | None = None) -> list[dict]:
    """Tuples (as rows) of image-statistics questions for the training-split images of `data_dir`.

    Each image is checked once as it is decoded for its statistics (the image gate, and
    `model_dir`'s patch recipe when given: train/training_images.py); a refused one is left out
    with a warning naming the record, the field and the reason, and appended to `left_out`.
    """
    from dermground.train.dataset import TrainingTuple, tuples_to_rows
    from dermground.train.training_images import TrainingImages

    if not 1 <= questions_per_image <= len(STATISTICS):
        raise ValueError(f"questions_per_image must be between 1 and {len(STATISTICS)}")
    images = TrainingImages(data_dir, model_dir, max_images=max_images, command="pretrain")
    tuples: list[TrainingTuple] = []
    for record, image in images:
        values = image_statistics(np.asarray(image))
        chosen = random.Random(f"{seed}:{record.isic_id}:pretrain").sample(STATISTICS, questions_per_image)
        for stat in chosen:
            tuples.append(TrainingTuple(record.isic_id, record.image_ref, (stat.key,), stat.question,
                                        _format(values[stat.key], stat.decimals)))
    if left_out is not None:
        left_out += images.left_out
    if not tuples:
        raise images.nothing_usable()
    return tuples_to_rows(tuples)


def pretrain_base(data_dir: str | Path, base_dir: str | Path, out_dir: str | Path, config: PretrainConfig | None = None,
                  *, cpus_per_worker: int | None = None, ray_address: str | None = None,
                  progress: bool = True) -> dict:
    """Full-parameter training of `base_dir` on image-statistics questions; writes a new base model to `out_dir`.

    config.tower_steps > 0 first trains the vision tower alone on local image statistics
    (`train.tower_pretrain`) and starts the question training from that model.
    """
    from dermground.platform.model.fingerprint import fingerprint
    from dermground.platform.model.loading import check_model_dir
    from dermground.train.dataset import data_fingerprint, rows_to_tuples
    from dermground.train.ray_train import CHECKPOINT_FOLDER, fit
    from dermground.platform.out_folder import require_writable_folder
    from dermground.train.model_swap import require_replaceable_out, swap_in_model

    config = config or PretrainConfig()
    base = check_model_dir(base_dir)
    out = Path(out_dir)
    if out.resolve() == base.resolve():
        raise ValueError("--out must differ from --base: pre-training writes a new model folder")
    require_writable_folder(out)  # before the image checks and Ray
    # Resolved: a symbolic link as --out is followed, so the folder it names is replaced, not the link.
    for line in require_replaceable_out(out.resolve()):
        print(f"pretrain: {line}", file=sys.stderr)
    left_out: list = []  # records the image checks refused (each named in a warning)
    rows = build_pretraining_rows(data_dir, config.questions_per_image, config.seed, config.max_images, model_dir=base,
                                  left_out=left_out)
    started = time.perf_counter()
    work = out.parent / f".{out.name}.pretrain"
    tower = _tower_stage(data_dir, base, work / "tower", config, progress)
    start_from = base if tower is None else work / "tower"
    state, final = fit(rows, start_from, work / CHECKPOINT_FOLDER, config, cpus_per_worker=cpus_per_worker,
                       ray_address=ray_address, progress=progress, desc="pretrain")
    metadata = {
        "what": "generic image-statistics pre-training of the tiny model (not the 16 attributes)",
        "questions": {s.key: s.question for s in STATISTICS}, "hyperparameters": config.hyperparameters(),
        "questions_per_image": config.questions_per_image, "n_tuples": len(rows),
        "data_fingerprint": data_fingerprint(rows_to_tuples(rows)), "from_base": str(base.resolve()),
        "from_fingerprint": fingerprint(base), "steps": int(state["step"]),
        "loss_curve": state["loss_curve"], "seconds": round(time.perf_counter() - started, 2),
        "tower": tower,
        "n_left_out": len(left_out), "left_out": [item.as_dict() for item in left_out],
    }

    def write(folder: Path) -> None:
        items = sorted(final.iterdir())
        for number, item in enumerate(items, start=1):
            shutil.copy2(item, folder / item.name)
            if number == len(items) // 2:
                maybe_crash("pretrain_half_copied")  # test hook: a kill in the middle of saving the new model
        metadata["fingerprint"] = fingerprint(folder)  # of the files alone: the same once the folder is --out
        (folder / PRETRAIN_METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")

    # Staged next to --out and checked before the old model there is touched (train/model_swap.py).
    swap_in_model(out.resolve(), write)
    shutil.rmtree(final)
    return metadata


def _tower_stage(data_dir: str | Path, base: Path, tower_dir: Path, config: PretrainConfig,
                 progress: bool) -> dict | None:
    """Run (or, after an interruption, reuse) the vision-tower stage; its metadata, or None when skipped."""
    from dermground.platform.model.fingerprint import fingerprint
    from dermground.train.tower_pretrain import (STATISTIC_NAMES, TOWER_METADATA_FILE, pretrain_tower,
                                                 read_tower_marker)

    if config.tower_steps == 0:
        return None
    marker = tower_dir / TOWER_METADATA_FILE
    wanted = config.tower_hyperparameters()
    if marker.is_file():  # written last, so its presence means the stage finished
        done, unreadable = read_tower_marker(marker)
        if done is None:
            print(f"pretrain: {marker} cannot be read ({unreadable}); running the vision-tower stage again",
                  file=sys.stderr)
        # A tower trained on another set of statistics (an older version of the stage) is not reused.
        elif ({k: done["hyperparameters"].get(k) for k in wanted} == wanted
              and done.get("statistics") == list(STATISTIC_NAMES)
              and done["from_fingerprint"] == fingerprint(base) and done["fingerprint"] == fingerprint(tower_dir)):
            return done
        shutil.rmtree(tower_dir)
    return pretrain_tower(data_dir, base, tower_dir, config, progress=progress)
