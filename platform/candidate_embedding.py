"""A hierarchical search's candidates re-embedded from their stored images, reading overlapped with the model.

    found = embed_candidates(provider, payloads, ["areaMM2"], max_pixels=settings.max_image_pixels)
    found.vectors[i]  # {"q_areaMM2": vector} of payloads[i]; i in found.skipped if its image was unreadable

A candidate costs CPU before the model sees it: its bytes, the image gate's decode and the patch
recipe (resize, normalise, patchify), 4-15 ms an image at 448 px (benchmarks/prep.py), i.e. 1-3 s
for b=200 on one core, as much as the whole query may take on a GPU. Here a small thread pool does
that work (PIL's decode and resize and numpy's arithmetic release the GIL) while the caller's
thread runs the model on the batch before: batch k+1 is prepared while batch k is embedded, and at
most two batches of prepared images (4.8 MB an image at 448 px) are held at once.

Batches hold at most the Embedder's `batch_size` images, as few as that allows, evenly filled;
the Embedder splits a batch further into passes within its patch budget (both sized for the
device: platform/search_embedder.py). A batch that still runs out of GPU memory is halved and
retried, so a query never fails for its size. The model lock (EmbedderProvider.run) is taken per batch,
so a long query does not hold off other requests for its whole length. Light on purpose (no store,
no Ray): benchmarks/gpu_embed.py times it on a device that has only the model code.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from dermground.platform.attributes import get_attribute
from dermground.platform.embedder_provider import EmbedderProvider, is_device_out_of_memory
from dermground.platform.model.image_inputs import PreparedImage, prepare_pixels

log = logging.getLogger("dermground.search")


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may run on (a container's share)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Threads reading and preparing candidates: half the usable cores (the model's own threads use the
# rest on a CPU-only server), at least 1, at most 8.
PREP_WORKERS = max(1, min(8, _usable_cpus() // 2))


class UnreadableCandidate(ValueError):
    """A point whose stored image cannot be read or decoded; str() names the point and the reason."""


def read_point_image(payload: Mapping[str, object], max_pixels: int) -> Image.Image:
    """The stored image of a point (its payload image_ref) through the image gate; UnreadableCandidate if unreadable."""
    from dermground.platform.image_sources import load_image_bytes
    from dermground.platform.images import INPUT_ERRORS, decode_image, rejection_reason

    ref = payload.get("image_ref")
    who = payload.get("isic_id")
    if not isinstance(ref, str):
        raise UnreadableCandidate(f"point {who!r} has no image_ref in its payload; re-ingest it")
    try:
        return decode_image(load_image_bytes(ref), max_pixels=max_pixels)
    except INPUT_ERRORS as exc:  # the same refusals as ingest's CPU stage
        raise UnreadableCandidate(f"cannot read the image of {who!r} ({ref}): {rejection_reason(exc)}") from None


def image_preparer(image_processor: object) -> Callable[[Image.Image], PreparedImage]:
    """One image -> its patches, as the model's image processor makes them.

    The numpy recipe (platform/model/patch_recipe.py, bit-identical to the processor) where it
    reproduces the processor's settings, else the processor itself.
    """
    from dermground.platform.model.patch_recipe import PatchRecipe, RecipeUnsupported

    try:
        return PatchRecipe.from_image_processor(image_processor).prepare
    except (RecipeUnsupported, AttributeError):
        return lambda image: prepare_pixels(image_processor, [image])[0]  # type: ignore[arg-type]


@dataclass
class CandidateVectors:
    """What `embed_candidates` found: vectors by the candidate's position in the input, and the skipped positions."""

    vectors: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    batch_size: int = 0


def embed_candidates(provider: EmbedderProvider, payloads: Sequence[Mapping[str, object]], attributes: Sequence[str],
                     *, max_pixels: int, workers: int = PREP_WORKERS) -> CandidateVectors:
    """The `q_<a>` vectors of each candidate (no `image` vector), read and prepared in a thread pool
    while the model embeds the batch before. An unreadable candidate is skipped with a warning."""
    found = CandidateVectors()
    if not payloads:
        return found
    embedder = provider.embedder()
    prepare = image_preparer(embedder.backbone.processor.image_processor)
    # As many passes as the Embedder's batch needs, evenly filled (200 at 64 a pass: 4 x 50, not 64, 64, 64, 8).
    passes = math.ceil(len(payloads) / max(1, embedder.batch_size))
    found.batch_size = batch_size = math.ceil(len(payloads) / passes)
    vector_names = {name: get_attribute(name).vector_name for name in attributes}

    def read_and_prepare(payload: Mapping[str, object]) -> PreparedImage:
        image = read_point_image(payload, max_pixels)
        try:
            return prepare(image)
        except ValueError as exc:  # the processor refuses an image the gate let through: skip it too
            raise UnreadableCandidate(f"cannot prepare the image of {payload.get('isic_id')!r}: {exc}") from None

    def embed(batch: list[tuple[int, PreparedImage]]) -> None:
        prepared = [p for _, p in batch]
        try:
            result = provider.run(lambda e: e.embed_prepared(prepared, list(attributes), include_image=False))
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            if not is_device_out_of_memory(exc) or len(batch) == 1:
                raise
            import torch  # loaded with the model by now

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("hierarchical search: %d candidates ran out of GPU memory in one pass; halving it "
                        "(lower DERMGROUND_SEARCH_EMBED_BATCH to avoid the retry)", len(batch))
            half = len(batch) // 2
            embed(batch[:half])
            embed(batch[half:])
            return
        for row, (position, _) in enumerate(batch):
            found.vectors[position] = {vector_names[a]: result.h_im_a[a][row]  # type: ignore[attr-defined]
                                       for a in attributes}

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="candidate-prep")
    pending: deque[tuple[int, Future[PreparedImage]]] = deque()
    submitted = 0

    def submit_ahead() -> None:
        # One batch ahead of what is gathered: while a batch is embedded, the pool prepares the next.
        nonlocal submitted
        while submitted < len(payloads) and len(pending) < batch_size:
            pending.append((submitted, pool.submit(read_and_prepare, payloads[submitted])))
            submitted += 1

    try:
        ready: list[tuple[int, PreparedImage]] = []
        submit_ahead()
        while pending:
            position, future = pending.popleft()
            try:
                ready.append((position, future.result()))
            except UnreadableCandidate as exc:  # one unreadable image must not fail every query near it
                log.warning("hierarchical search skips a candidate: %s", exc)
                found.skipped.append(position)
            submit_ahead()
            if len(ready) == batch_size or (not pending and ready):
                embed(ready)  # the pool prepares the next batch meanwhile
                ready = []
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return found
