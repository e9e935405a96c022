"""The Ray Data embedding actor: loads the backbone once, maps batches of image refs to vectors.

Input batch columns: `isic_id`, `image_ref`, `part` (partition index). Output columns: the same
ids, `error` ("" when embedded, else why the image was rejected) and `vectors`, float32
[n, len(VECTOR_NAMES), d] in VECTOR_NAMES order (zeros on rejected rows). A bad image is data,
not a failure: it becomes an `error` row the driver quarantines, and the rest of the batch goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dermground.platform.image_sources import load_image_bytes
from dermground.platform.images import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from dermground.platform.store.schema import DEFAULT_VECTOR_NAMES, IMAGE_VECTOR

VECTOR_NAMES: tuple[str, ...] = DEFAULT_VECTOR_NAMES
# Errors that a single bad input can cause (decoding, the processor's size checks, a missing key).
_INPUT_ERRORS = (ImageRejected, ValueError, OSError, KeyError)


class EmbeddingActor:
    """Callable class for `Dataset.map_batches(..., compute=ActorPoolStrategy(...))`."""

    def __init__(self, model_dir: str, adapter_dir: str | None, expected_fingerprint: str,
                 device: str = "auto", dtype: str = "auto", batch_size: int = 4, num_threads: int = 1,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        import torch

        from dermground.platform.embed import Embedder
        from dermground.platform.model.loading import load_backbone

        # Ray sets OMP_NUM_THREADS to the actor's num_cpus; torch must use the cores it was given.
        torch.set_num_threads(max(1, num_threads))
        backbone = load_backbone(Path(model_dir), Path(adapter_dir) if adapter_dir else None,
                                 device=device, dtype=dtype)
        if backbone.fingerprint != expected_fingerprint:
            # Same path, other bytes (e.g. a cluster node with another copy): never mix models.
            raise RuntimeError(f"the model at {model_dir} on this node has fingerprint {backbone.fingerprint}, "
                               f"the driver expected {expected_fingerprint}; every node must see the same model files")
        self.embedder = Embedder(backbone, batch_size=batch_size)
        self.max_pixels = max_pixels
        self.dim = backbone.hidden_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        refs = [str(r) for r in batch["image_ref"]]
        n = len(refs)
        errors = [""] * n
        images = []
        good: list[int] = []
        for i, ref in enumerate(refs):
            try:
                images.append(decode_image(load_image_bytes(ref), max_pixels=self.max_pixels))
                good.append(i)
            except _INPUT_ERRORS as exc:
                errors[i] = _reason(exc)
        vectors = np.zeros((n, len(VECTOR_NAMES), self.dim), dtype=np.float32)
        if good:
            try:
                vectors[good] = self._embed(images)
            except _INPUT_ERRORS:
                # One image the processor refuses must not cost the batch: retry one by one.
                for i, image in zip(good, images, strict=True):
                    try:
                        vectors[i] = self._embed([image])[0]
                    except _INPUT_ERRORS as exc:
                        errors[i] = _reason(exc)
        return {"isic_id": batch["isic_id"], "part": batch["part"], "error": np.array(errors, dtype=object),
                "vectors": vectors}

    def _embed(self, images: Sequence[object]) -> np.ndarray:
        out = self.embedder.embed(images)  # type: ignore[arg-type]
        by_name = {IMAGE_VECTOR: out.h_im}
        from dermground.platform.attributes import get_attribute

        for name, array in out.h_im_a.items():
            by_name[get_attribute(name).vector_name] = array
        stacked = np.stack([by_name[name] for name in VECTOR_NAMES], axis=1)
        if not np.all(np.isfinite(stacked)):
            raise ValueError("the model produced NaN/inf embeddings for this image")
        return stacked


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ImageRejected) else f"{type(exc).__name__}: {text}"
