"""The training-split images a run can use, each checked once before any worker sees it.

    images = TrainingImages(data_dir, model_dir, command="train")
    for record, image in images: ...      # the usable records, in the CSV's order, with their decoded image
    images.left_out                        # the others: record, field and reason, each also logged

Every image goes through the image gate (platform/images.py, with the pixel limit the training
loop decodes with) and the checkpoint's patch recipe (platform/model/patch_recipe.py), the same
checks as ingest's CPU stage. A record refused there, or by the reader (a missing image file, a
bad value), is left out with a warning naming the record, the field and the reason, and the run
goes on with the rest: one poison image used to stop a training run at the step that first
decoded it, on a Ray worker, naming no record. The rows shipped to the workers hold only records
that passed, so the workers never meet a refused image.

Decoding runs on a few threads (Pillow's decoders and numpy release the GIL) a short way ahead
of the consumer; the decoded image is handed to the caller (pre-training computes its targets
from it) and then dropped, so memory stays at a few images whatever the data set's size.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from dermground.platform.images import DEFAULT_MAX_PIXELS, INPUT_ERRORS, rejection_reason
from dermground.platform.next_step import next_command

if TYPE_CHECKING:
    from dermground.platform.records import LesionRecord

_log = logging.getLogger(__name__)

IMAGE_FIELD = "image"
MAX_THREADS = 8


@dataclass(frozen=True)
class LeftOut:
    """A training record the run does not use: its id, the field at fault and why."""

    isic_id: str
    field: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def image_check(model_dir: str | Path | None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Callable[[str], Image.Image]:
    """A function from an image reference to its decoded image, raising what a refused image raises.

    The gate, then the checkpoint's patch recipe when `model_dir` is given and its recipe is one
    the project reproduces (a checkpoint whose processor it does not: the gate alone, the worker's
    processor then has the last word, as before this check existed).
    """
    from dermground.platform.image_sources import load_image_bytes
    from dermground.platform.images import decode_image
    from dermground.platform.model.patch_recipe import PatchRecipe, RecipeUnsupported

    recipe = None
    if model_dir is not None:
        try:
            recipe = PatchRecipe.from_model_dir(model_dir)
        except RecipeUnsupported as exc:
            _log.info("training images are checked by the image gate only: %s", exc)

    def check(image_ref: str) -> Image.Image:
        image = decode_image(load_image_bytes(image_ref), max_pixels=max_pixels)
        if recipe is not None:
            recipe.prepare(image)
        return image

    return check


class TrainingImages:
    """The usable training-split records of `data_dir` with their decoded images (iterate once);
    `left_out` lists the refused ones met so far, each also logged as a warning by `command`."""

    def __init__(self, data_dir: str | Path, model_dir: str | Path | None = None, *, max_images: int | None = None,
                 command: str = "train", progress: bool = False, threads: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.max_images = max_images
        self.command = command
        self.progress = progress
        self.threads = threads or max(1, min(MAX_THREADS, os.cpu_count() or 1))
        self.left_out: list[LeftOut] = []
        self._check = image_check(model_dir)

    def __iter__(self) -> Iterator[tuple[LesionRecord, Image.Image]]:
        """(LesionRecord, RGB image) for each usable record, in the CSV's order, up to max_images of them."""
        from dermground.platform.progress import progress_bar
        from dermground.platform.records import LesionRecord, RejectedRecord, read_records, unique_records

        if self.max_images is not None and self.max_images < 1:
            return
        kept = 0
        pending: deque[tuple[LesionRecord | RejectedRecord, Future | None]] = deque()
        # A repeated row is left out as ingest and eval leave it out: it would weigh twice in the loss.
        records = iter(unique_records(read_records(self.data_dir, split="train")))
        with ThreadPoolExecutor(self.threads, thread_name_prefix="train-image-check") as pool, \
                progress_bar(desc=f"{self.command}: check images", unit="img", disable=not self.progress) as bar:
            try:
                while True:
                    while len(pending) < 2 * self.threads:  # read a short way ahead of the consumer
                        record = next(records, None)
                        if record is None:
                            break
                        future = pool.submit(self._check, record.image_ref) if isinstance(record, LesionRecord) else None
                        pending.append((record, future))
                    if not pending:
                        return
                    record, future = pending.popleft()
                    bar.update(1)
                    if future is None:  # the reader refused it: it names the field itself
                        self._leave_out(LeftOut(record.isic_id, record.field, record.reason))  # type: ignore[union-attr]
                        continue
                    try:
                        image = future.result()
                    except INPUT_ERRORS as exc:  # the same refusals as ingest's CPU stage
                        self._leave_out(LeftOut(record.isic_id, IMAGE_FIELD, rejection_reason(exc)))
                        continue
                    yield record, image  # type: ignore[misc]
                    kept += 1
                    if self.max_images is not None and kept >= self.max_images:
                        return
            finally:
                for _, future in pending:  # read ahead past max_images (or the consumer stopped): not needed
                    if future is not None:
                        future.cancel()

    def _leave_out(self, item: LeftOut) -> None:
        self.left_out.append(item)
        _log.warning("%s leaves out training record %s: field %s: %s", self.command, item.isic_id or "(no isic_id)",
                     item.field, item.reason)

    def nothing_usable(self) -> ValueError:
        """The error for a data set none of whose training-split records can be used, with a next step."""
        if not self.left_out:
            return ValueError(f"{self.data_dir} has no training-split images; check the data folder "
                              f"(`{next_command('synth --out DIR')}` makes one)")
        return ValueError(f"{self.data_dir}: all {len(self.left_out)} training-split records were left out "
                          f"(first: {self.left_out[0].isic_id or '(no isic_id)'}: field {self.left_out[0].field}: "
                          f"{self.left_out[0].reason}); fix or replace the images the warnings above name, "
                          "then run again")
