"""The Embedder search uses (queries, hierarchical candidates), its passes sized for the device.

    embedder = search_embedder(backbone, settings.search_embed_batch)   # "auto" or an integer

A hierarchical query re-embeds up to b candidates (platform/candidate_embedding.py). On a GPU large
passes keep the card busy, up to what its free memory holds. A pass's memory grows with the
patches of its images (vision activations; the decoder's image tokens, whose cache every one of
the 16 question rows copies), not with their number: SLICE-3D's 133 px crops bring ~100 patches,
a 600 x 450 photo ~1,300, a 4 MP one 21,000. So "auto" measures, once, when the model is loaded,
the bytes a patch adds and the fixed bytes of a pass (a probe of 1 and of 2 images at 448 px, all
16 questions and h_im, torch.cuda.max_memory_allocated above what was allocated before) and
gives the Embedder a patch budget per pass within MEMORY_FRACTION of the free memory
(`fitting_patch_budget`), and at most MAX_AUTO_BATCH images a pass. Memory is assumed to grow
linearly with patches (the vision attention runs on SDPA's fused kernels on a GPU, which hold no
score matrix); if a pass still runs out of memory, candidate_embedding halves it and retries.
On a CPU memory is not the limit and larger batches were not faster on 2 cores: CPU_BATCH.

The suffix pass takes every question of a pass's images at once: suffix_batch = 16 x batch_size.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from dermground.platform.embed import Embedder
    from dermground.platform.model.loading import Backbone

log = logging.getLogger("dermground.search")

AUTO = "auto"
CPU_BATCH = 4  # today's default: on the 2-core CPU larger prefix batches were not faster (docs/BENCHMARKS.md)
MAX_AUTO_BATCH = 64  # images a pass at most: beyond this a GPU pass is long enough that batching gains nothing more
MEMORY_FRACTION = 0.8  # of the free memory: room for allocator fragmentation and other requests
PROBE_SIDE = 448  # px: the probe's image (the processor may resize it; its patches are counted after)


def fitting_patch_budget(free_bytes: int, per_patch_bytes: float, fixed_bytes: int,
                         fraction: float = MEMORY_FRACTION) -> int | None:
    """The most patches n with fixed_bytes + n x per_patch_bytes <= fraction x free_bytes.

    0 when not even the fixed part fits (the Embedder still runs one image a pass); None when a
    patch adds no measurable memory (no limit).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if per_patch_bytes <= 0:
        return None
    room = math.floor(max(free_bytes, 0) * fraction) - max(fixed_bytes, 0)
    return max(0, math.floor(room / per_patch_bytes))


@dataclass(frozen=True)
class MemoryProbe:
    """What one pass costs on the card: bytes per patch, fixed bytes, and the card's free bytes."""

    per_patch_bytes: float
    fixed_bytes: int
    free_bytes: int
    probe_patches: int  # patches of the probe image

    def patch_budget(self) -> int | None:
        return fitting_patch_budget(self.free_bytes, self.per_patch_bytes, self.fixed_bytes)


def probe_image(side: int = PROBE_SIDE) -> Image.Image:
    """A square lesion-sized image for the probe (its content does not matter)."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def probe_memory(backbone: Backbone) -> MemoryProbe:
    """Measure, on the backbone's CUDA device, what a pass of 1 and of 2 images allocates."""
    import torch

    from dermground.platform.embed import Embedder, every_question_rows
    from dermground.platform.model.image_inputs import prepare_pixels

    device = backbone.device
    (prepared,) = prepare_pixels(backbone.processor.image_processor, [probe_image()])

    def peak(n: int) -> int:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        Embedder(backbone, n, every_question_rows(n)).embed_prepared([prepared] * n)  # all 16 questions and h_im
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    peak(1)  # the first pass allocates once-only workspaces (cuBLAS, kernels): not an image's cost
    one, two = peak(1), peak(2)
    per_image = max(two - one, 1)
    torch.cuda.empty_cache()  # what the allocator cached is free for the passes to come
    free, _ = torch.cuda.mem_get_info(device)
    patches = prepared.patches
    return MemoryProbe(per_patch_bytes=per_image / patches, fixed_bytes=max(one - per_image, 0), free_bytes=int(free),
                       probe_patches=patches)


@dataclass(frozen=True)
class SearchBatching:
    """Images a pass at most and, on a GPU, patches a pass at most (None: no patch limit)."""

    max_images: int
    max_patches: int | None = None


def search_batching(backbone: Backbone, setting: int | str) -> SearchBatching:
    """The setting's integer (images a pass), or for "auto" the measured patch budget on CUDA and CPU_BATCH elsewhere."""
    if setting != AUTO:
        size = int(setting)
        if size < 1:
            raise ValueError(f"search_embed_batch must be 'auto' or >= 1, got {setting!r}")
        return SearchBatching(size)
    if backbone.device.type != "cuda":
        return SearchBatching(CPU_BATCH)
    probe = probe_memory(backbone)
    budget = probe.patch_budget()
    log.info("search passes: at most %s patches (%d images of the %d-patch probe) and %d images; %.2f MiB a patch, "
             "%.0f MiB fixed, %.1f GiB free on %s (%.0f%% used)", budget,
             (budget or 0) // max(probe.probe_patches, 1), probe.probe_patches, MAX_AUTO_BATCH,
             probe.per_patch_bytes / 2**20, probe.fixed_bytes / 2**20, probe.free_bytes / 2**30, backbone.device,
             100 * MEMORY_FRACTION)
    return SearchBatching(MAX_AUTO_BATCH, max(budget, 1) if budget is not None else None)


def search_embedder(backbone: Backbone, setting: int | str = AUTO) -> Embedder:
    """An Embedder with search's passes (`search_batching`) and a suffix pass for all of a pass's questions."""
    from dermground.platform.embed import Embedder, every_question_rows

    batching = search_batching(backbone, setting)
    log.info("search's embedder: at most %d images and %s patches a pass (search_embed_batch=%s)",
             batching.max_images, batching.max_patches, setting)
    return Embedder(backbone, batch_size=batching.max_images, suffix_batch=every_question_rows(batching.max_images),
                    max_patches=batching.max_patches)
