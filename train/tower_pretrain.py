"""Vision-tower pre-training on local image statistics (the tiny model, tests and the demo only).

A real Qwen2-VL's vision tower arrives having learned colours, edges and textures from a very large
image corpus. The tiny model's starts random, and the question pre-training (`train.pretrain`)
reaches it only through the decoder's digits: ridge probes of the tower's output found the lesion's
colour and the skin's texture no better, or worse, after question pre-training than in random
features (docs/EVALUATION.md, "Why the weak attributes stay weak"). This stage gives the tower
those generic skills directly: from every merged image token (what the decoder sees), a linear
head regresses statistics of the pixels under that token's 28 x 28 px region of the model input:

    mean and standard deviation of L*, a* and b* (CIE LAB, D65), and the mean L*, b* and
    brightness-gradient magnitude (|grad L*|) of each of the region's 2 x 2 quarters

(18 numbers per token, standardised over the training images; mean squared error; AdamW with a
one-cycle schedule). No lesion mask and no attribute is used: the targets are the same for any
image. Only the vision tower (patch embedding, blocks, merger) is trained; the head is thrown
away and the result is saved as a new model folder that `load_backbone` loads like any checkpoint.
It runs in the calling process on the CPU (a few minutes at most for the tiny model); the
question stage that follows runs on Ray Train.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from dermground.platform.durable_json import durable_write_json
from dermground.train.config import PretrainConfig

TOWER_METADATA_FILE = "dermground_tower_pretrain.json"
# The base's weights and their shard indexes: save_pretrained writes the new ones (a stale index copied
# from a sharded hub base would point the output at shards it does not have).
_BASE_WEIGHT_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_BASE_WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKEN_PIXELS = 28  # a merged token covers merge_size (2) x patch_size (14) pixels on each side
QUARTERS = 2  # sub-regions per token side for the quarter statistics
STATISTIC_NAMES = (
    [f"mean_{c}" for c in "Lab"] + [f"std_{c}" for c in "Lab"]
    + [f"{stat}_q{q}" for stat in ("mean_L", "mean_b", "grad_L") for q in range(QUARTERS * QUARTERS)]
)


def region_statistics(rgb: np.ndarray) -> np.ndarray:
    """Statistics of each token region of an RGB uint8 image whose sides are multiples of 28 px.

    Returns float32 (tokens, len(STATISTIC_NAMES)), tokens in the merger's row-major order.
    """
    from dermground.platform.attribute_measure import srgb_to_lab

    height, width = rgb.shape[:2]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or height % TOKEN_PIXELS or width % TOKEN_PIXELS:
        raise ValueError(f"need an RGB image with sides that are multiples of {TOKEN_PIXELS} px, got {rgb.shape}")
    lab = srgb_to_lab(rgb)
    grad_y, grad_x = np.gradient(lab[..., 0])
    gradient = np.hypot(grad_x, grad_y)
    rows, cols = height // TOKEN_PIXELS, width // TOKEN_PIXELS

    def block_means(plane: np.ndarray, per_side: int) -> np.ndarray:
        """(rows*cols, per_side**2) means of the per_side x per_side sub-blocks of every token region."""
        side = TOKEN_PIXELS // per_side
        blocks = plane.reshape(rows, per_side, side, cols, per_side, side).mean(axis=(2, 5))
        return blocks.transpose(0, 2, 1, 3).reshape(rows * cols, per_side * per_side)

    means = [block_means(lab[..., c], 1) for c in range(3)]
    stds = [np.sqrt(np.maximum(block_means(lab[..., c] ** 2, 1) - m**2, 0.0)) for c, m in enumerate(means)]
    quarters = [block_means(plane, QUARTERS) for plane in (lab[..., 0], lab[..., 2], gradient)]
    return np.concatenate(means + stds + quarters, axis=1).astype(np.float32)


def _model_input_rgb(image, grid_thw: torch.Tensor, patch_size: int) -> np.ndarray:  # noqa: ANN001 - a PIL image
    """The image at the size the processor gave the model (grid x patch size), as RGB uint8."""
    from PIL import Image

    height, width = int(grid_thw[1]) * patch_size, int(grid_thw[2]) * patch_size
    return np.asarray(image.convert("RGB").resize((width, height), Image.BICUBIC))


def _encode_images(data_dir: Path, model_dir: Path, processor, max_images: int | None, progress: bool):  # noqa: ANN001, ANN202
    """Patches (float16, to halve the memory), grids and region statistics of the usable train-split
    images (refused ones are left out, each named in a warning: train/training_images.py)."""
    from dermground.platform.progress import progress_bar
    from dermground.train.training_images import TrainingImages

    patch_size = int(processor.image_processor.patch_size)
    if patch_size * int(processor.image_processor.merge_size) != TOKEN_PIXELS:
        raise ValueError(f"the model's merged tokens are not {TOKEN_PIXELS} px wide (patch {patch_size}, merge "
                         f"{processor.image_processor.merge_size}): tower pre-training supports Qwen2-VL's 14 x 2")
    images = TrainingImages(data_dir, model_dir, max_images=max_images, command="pretrain (tower)")
    patches, grids, targets = [], [], []
    for _, image in progress_bar(images, desc="tower: encode", unit="image", disable=not progress):
        encoded = processor.image_processor(images=[image], return_tensors="pt")
        grid = encoded["image_grid_thw"][0]
        patches.append(encoded["pixel_values"].to(torch.float16))
        grids.append(grid)
        targets.append(region_statistics(_model_input_rgb(image, grid, patch_size)))
    if not patches:
        raise images.nothing_usable()
    return patches, torch.stack(grids), np.stack(targets)


def pretrain_tower(data_dir: str | Path, base_dir: str | Path, out_dir: str | Path, config: PretrainConfig, *,
                   progress: bool = True) -> dict:
    """Train the vision tower of `base_dir` on region statistics for config.tower_steps steps (with its
    batch_size, lr, seed and max_images); write a new model to `out_dir`."""
    from dermground.platform.model.fingerprint import fingerprint
    from dermground.platform.model.loading import check_model_dir, load_backbone

    if config.tower_steps < 1:
        raise ValueError("--tower-steps must be at least 1 to train the tower")
    base = check_model_dir(base_dir)
    out = Path(out_dir)
    if out.resolve() == base.resolve():
        raise ValueError("--out must differ from --base: tower pre-training writes a new model folder")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    backbone = load_backbone(base, device="cpu", dtype="float32", for_training=True)
    model = backbone.core
    patches, grids, raw_targets = _encode_images(Path(data_dir), base, backbone.processor, config.max_images, progress)
    batch = min(config.batch_size, len(patches))
    curve = _train_tower(model, patches, grids, _standardised(raw_targets), config, batch, progress)
    _save_model(model, base, out)
    metadata = {
        "what": "vision-tower pre-training on local image statistics of the tiny model (not the 16 attributes)",
        "statistics": list(STATISTIC_NAMES), "token_pixels": TOKEN_PIXELS,
        "hyperparameters": {**config.tower_hyperparameters(), "schedule": "one-cycle"},
        "effective_batch_size": batch,
        "n_images": len(patches), "from_base": str(base.resolve()), "from_fingerprint": fingerprint(base),
        "fingerprint": fingerprint(out), "loss_curve": curve, "final_loss": curve[-1][1],
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_tower_marker(out, metadata)
    return metadata


def write_tower_marker(out: Path, metadata: dict) -> None:
    """Write the stage's metadata to `out`, whole or not at all: it is the "stage finished" marker.

    Through a temporary file and a rename, so a kill or a full disk while writing leaves no marker
    (the stage is redone) instead of a cut-short one."""
    durable_write_json(Path(out) / TOWER_METADATA_FILE, metadata)


def read_tower_marker(marker: Path) -> tuple[dict | None, str]:
    """The metadata of a finished tower stage, or (None, why not) when `marker` is missing or cannot be read.

    A marker that cannot be read (cut short by a kill before it was written atomically, or edited)
    means the stage is not known to have finished: the caller runs it again rather than stopping."""
    try:
        content = json.loads(Path(marker).read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    needed = ("hyperparameters", "statistics", "from_fingerprint", "fingerprint")
    if not isinstance(content, dict) or not all(key in content for key in needed) \
            or not isinstance(content["hyperparameters"], dict):
        return None, f"not a tower-stage record (it needs {', '.join(needed)})"
    return content, ""


def _standardised(raw_targets: np.ndarray) -> torch.Tensor:
    """The targets standardised per statistic over every token of every training image."""
    flat = raw_targets.reshape(-1, raw_targets.shape[-1])
    mean, scale = flat.mean(axis=0), flat.std(axis=0) + 1e-6
    return torch.from_numpy((raw_targets - mean) / scale)


def _train_tower(model: torch.nn.Module, patches: list[torch.Tensor], grids: torch.Tensor, targets: torch.Tensor,
                 config: PretrainConfig, batch: int, progress: bool) -> list[tuple[int, float]]:
    """The tower (and a throw-away linear head) trained to regress `targets`; the loss curve."""
    from dermground.platform.progress import progress_bar

    tower = model.model.visual
    model.requires_grad_(False)
    tower.requires_grad_(True)
    tower.train()
    head = torch.nn.Linear(int(model.config.text_config.hidden_size), targets.shape[-1])
    optimizer = torch.optim.AdamW(list(tower.parameters()) + list(head.parameters()), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.tower_steps,
                                                   pct_start=0.05)
    order_rng = random.Random(f"{config.seed}:tower")
    curve: list[tuple[int, float]] = []
    bar = progress_bar(range(config.tower_steps), desc="tower: train", unit="step", disable=not progress)
    for step in bar:
        chosen = order_rng.sample(range(len(patches)), batch)
        pixel_values = torch.cat([patches[i] for i in chosen]).float()
        output = tower(pixel_values, grid_thw=grids[chosen])
        tokens = getattr(output, "pooler_output", output).reshape(batch, targets.shape[1], -1)
        loss = torch.nn.functional.mse_loss(head(tokens), targets[chosen])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == config.tower_steps - 1:
            value = float(loss.detach())
            curve.append((step + 1, round(value, 5)))
            bar.set_postfix(loss=f"{value:.4f}")
    return curve


def _save_model(model: torch.nn.Module, base: Path, out: Path) -> None:
    """The trained weights beside a copy of everything else of `base` (tokenizer, processor, chat template)."""
    out.mkdir(parents=True, exist_ok=True)
    for item in base.iterdir():
        if (item.is_file() and not item.name.endswith(_BASE_WEIGHT_SUFFIXES)
                and item.name not in (*_BASE_WEIGHT_FILES, TOWER_METADATA_FILE)):
            shutil.copy2(item, out / item.name)
    model.save_pretrained(out)
