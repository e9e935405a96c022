"""The Embedder search uses (queries, hierarchical candidates), its batch sized for the device.

    embedder = search_embedder(backbone, settings.search_embed_batch)   # "auto" or an integer

A hierarchical query re-embeds up to b candidates (platform/candidate_embedding.py) in batches of
`Embedder.batch_size` images. On a GPU a larger batch keeps the card busy, up to what its free
memory holds; "auto" measures that once, when the model is loaded: one probe pass of 1 image and
one of 2 (all 16 questions and h_im, the most work an image can bring) give the bytes an image
adds and the fixed bytes of a pass (torch.cuda.max_memory_allocated above what was allocated
before), and `fitting_batch_size` picks the largest batch within MEMORY_FRACTION of the free
memory, at most MAX_AUTO_BATCH. The probe image is as large as a candidate can reach the model
(the processor's max_pixels, at most what the image gate keeps), so smaller real images leave
room to spare. Memory is assumed to grow linearly with the batch (rows of a pass are independent).
On a CPU memory is not the limit and larger batches were not faster on 2 cores: CPU_BATCH.

The suffix pass takes every question of a batch's images at once: suffix_batch = 16 x batch_size.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from dermground.platform.attributes import ATTRIBUTE_NAMES

if TYPE_CHECKING:
    from dermground.platform.embed import Embedder
    from dermground.platform.model.loading import Backbone

log = logging.getLogger("dermground.search")

AUTO = "auto"
CPU_BATCH = 4  # today's default: on the 2-core CPU larger prefix batches were not faster (docs/BENCHMARKS.md)
MAX_AUTO_BATCH = 64  # beyond this a GPU pass is long enough that batching gains nothing more
MEMORY_FRACTION = 0.8  # of the free memory: room for allocator fragmentation and other requests
SUFFIX_ROWS_PER_IMAGE = len(ATTRIBUTE_NAMES)  # every question of an image in one suffix pass
# The largest image the gate hands on is under 4x its KEEP_PIXELS (platform/images.py: a larger
# one is reduced by an integer factor), so no candidate reaches the model with more pixels.
PROBE_MAX_PIXELS = 4 * 1024 * 1024


def fitting_batch_size(free_bytes: int, per_image_bytes: int, fixed_bytes: int, cap: int,
                       fraction: float = MEMORY_FRACTION) -> int:
    """The largest n in [1, cap] with fixed_bytes + n x per_image_bytes <= fraction x free_bytes.

    1 when not even one image fits (the model still runs, one image at a time); cap when an image
    adds no measurable memory.
    """
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if per_image_bytes <= 0:
        return cap
    room = math.floor(max(free_bytes, 0) * fraction) - max(fixed_bytes, 0)
    return max(1, min(cap, room // per_image_bytes))


@dataclass(frozen=True)
class MemoryProbe:
    """What one pass costs on the card: bytes per image, fixed bytes, and the card's free bytes."""

    per_image_bytes: int
    fixed_bytes: int
    free_bytes: int

    def batch_size(self, cap: int = MAX_AUTO_BATCH) -> int:
        return fitting_batch_size(self.free_bytes, self.per_image_bytes, self.fixed_bytes, cap)


def probe_image(image_processor: object) -> Image.Image:
    """A square image as large as a candidate can reach the model (its content does not matter)."""
    size = getattr(image_processor, "size", None)
    max_pixels = getattr(size, "longest_edge", None) or PROBE_MAX_PIXELS
    side = max(56, math.isqrt(min(int(max_pixels), PROBE_MAX_PIXELS)))
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def probe_memory(backbone: Backbone) -> MemoryProbe:
    """Measure, on the backbone's CUDA device, what a pass of 1 and of 2 images allocates."""
    import torch

    from dermground.platform.embed import Embedder

    device = backbone.device
    image = probe_image(backbone.processor.image_processor)

    def peak(n: int) -> int:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        Embedder(backbone, n, SUFFIX_ROWS_PER_IMAGE * n).embed([image] * n)  # all 16 questions and h_im
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    peak(1)  # the first pass allocates once-only workspaces (cuBLAS, kernels): not an image's cost
    one, two = peak(1), peak(2)
    per_image = max(two - one, 1)
    torch.cuda.empty_cache()  # what the allocator cached is free for the batches to come
    free, _ = torch.cuda.mem_get_info(device)
    return MemoryProbe(per_image_bytes=per_image, fixed_bytes=max(one - per_image, 0), free_bytes=int(free))


def search_batch_size(backbone: Backbone, setting: int | str) -> int:
    """Images per pass: the setting's integer, or for "auto" the measured size on CUDA and CPU_BATCH elsewhere."""
    if setting != AUTO:
        size = int(setting)
        if size < 1:
            raise ValueError(f"search_embed_batch must be 'auto' or >= 1, got {setting!r}")
        return size
    if backbone.device.type != "cuda":
        return CPU_BATCH
    probe = probe_memory(backbone)
    size = probe.batch_size()
    log.info("search embeds %d images a pass: %.0f MiB an image, %.0f MiB fixed, %.1f GiB free on %s (%.0f%% used)",
             size, probe.per_image_bytes / 2**20, probe.fixed_bytes / 2**20, probe.free_bytes / 2**30, backbone.device,
             100 * MEMORY_FRACTION)
    return size


def search_embedder(backbone: Backbone, setting: int | str = AUTO) -> Embedder:
    """An Embedder with search's batch size (`search_batch_size`) and a suffix pass for all its questions."""
    from dermground.platform.embed import Embedder

    size = search_batch_size(backbone, setting)
    log.info("search's embedder: %d images a pass (search_embed_batch=%s)", size, setting)
    return Embedder(backbone, batch_size=size, suffix_batch=SUFFIX_ROWS_PER_IMAGE * size)
