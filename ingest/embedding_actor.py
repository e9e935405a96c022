"""The Ray Data embedding actor: loads the backbone once, maps batches of prepared images to vectors.

Input batch columns: what ingest/image_prep.py's CPU stage emits (`isic_id`, `part`, `error`,
`pixel_values`, `grid_thw`). Output columns: the same ids, `error` ("" when embedded, else why
the image was rejected), `vectors`, float32 [n, len(VECTOR_NAMES), d] in VECTOR_NAMES order
(zeros on rejected rows), and `actor` / `model_seconds` / `batch_finished`: which actor embedded
the row, its share of the seconds the batch spent in the model and when (epoch seconds, the
actor's clock) that model call ended, from which the driver reports how busy the model (the GPU,
when an actor has one) was kept (ingest/model_busy.py). A bad image is data, not a failure: it
becomes an `error` row the driver quarantines, and the rest of the batch goes on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dermground.ingest.image_prep import INPUT_ERRORS, recipe_for, rejection_reason
from dermground.platform.model.image_inputs import PreparedImage
from dermground.platform.model.patch_dtype import ARRAY_DTYPES, PatchDtype
from dermground.platform.model.patch_recipe import PatchRecipe
from dermground.platform.store.schema import DEFAULT_VECTOR_NAMES, IMAGE_VECTOR

VECTOR_NAMES: tuple[str, ...] = DEFAULT_VECTOR_NAMES


def suffix_rows(batch_size: int, device_type: str) -> int:
    """Question rows per suffix pass: on a GPU every question of every image of a batch in one pass
    (the shape of the fastest configurations measured on an H100, docs/BENCHMARKS.md: 16:256 for
    the 2B, 8:128 for the 7B); on a CPU the Embedder's default."""
    from dermground.platform.embed import DEFAULT_SUFFIX_BATCH, every_question_rows  # in the actor, with torch

    return every_question_rows(batch_size) if device_type == "cuda" else DEFAULT_SUFFIX_BATCH


class EmbeddingActor:
    """Callable class for `Dataset.map_batches(..., compute=ActorPoolStrategy(...))`."""

    def __init__(self, model_dir: str, adapter_dir: str | None, expected_fingerprint: str,
                 device: str = "auto", dtype: str = "auto", batch_size: int = 4, num_threads: int = 1,
                 patch_dtype: PatchDtype = "float32") -> None:
        import torch

        # Imported here, in the actor: the driver imports this module without torch.
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
        recipe = recipe_for(model_dir)
        if recipe != PatchRecipe.from_image_processor(backbone.processor.image_processor):
            # The CPU stage prepares images from the folder's config; the model was trained on what
            # transformers' processor makes of it. They must agree, or every vector is subtly off.
            raise RuntimeError(f"the image settings in {model_dir} ({recipe}) differ from its image processor's; "
                               "report this checkpoint's processor config")
        if patch_dtype != "float32" and getattr(torch, patch_dtype) != backbone.dtype:
            # The CPU stage rounded the patches for another dtype than this model's (job.py predicts it).
            raise RuntimeError(f"the CPU stage sends image patches in {patch_dtype}, but the model on this actor "
                               f"runs in {backbone.dtype}; set DERMGROUND_DTYPE explicitly "
                               "(auto, float32, bfloat16, float16)")
        self.patch_dtype = ARRAY_DTYPES[patch_dtype]
        self.embedder = Embedder(backbone, batch_size=batch_size,
                                 suffix_batch=suffix_rows(batch_size, backbone.device.type))
        self.dim = backbone.hidden_size
        self.actor_id = uuid.uuid4().hex[:12]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = [str(e) for e in batch["error"]]
        n = len(errors)
        good = [i for i in range(n) if not errors[i]]
        images = [PreparedImage(np.asarray(batch["pixel_values"][i]),
                                tuple(int(x) for x in batch["grid_thw"][i])) for i in good]  # type: ignore[arg-type]
        wrong = {str(image.pixel_values.dtype) for image in images} - {str(self.patch_dtype)}
        if wrong:  # a casting read would turn bit patterns into numbers: never guess
            raise RuntimeError(f"image patches arrived as {', '.join(sorted(wrong))}, this actor expects "
                               f"{self.patch_dtype} (the CPU stage and the actors were set up differently)")
        vectors = np.zeros((n, len(VECTOR_NAMES), self.dim), dtype=np.float32)
        # The model's results come back as numpy arrays, so a GPU has finished when the clock stops.
        started = time.perf_counter()
        if good:
            try:
                vectors[good] = self._embed(images)
            except INPUT_ERRORS:
                # One image the model cannot embed (e.g. NaN vectors) must not cost the batch.
                for i, image in zip(good, images, strict=True):
                    try:
                        vectors[i] = self._embed([image])[0]
                    except INPUT_ERRORS as exc:
                        errors[i] = rejection_reason(exc)
        model_seconds = time.perf_counter() - started if good else 0.0
        return {"isic_id": batch["isic_id"], "part": batch["part"], "error": np.array(errors, dtype=object),
                "vectors": vectors, "actor": np.full(n, self.actor_id, dtype=object),
                "model_seconds": np.full(n, model_seconds / max(n, 1), dtype=np.float64),
                "batch_finished": np.full(n, time.time(), dtype=np.float64)}

    def _embed(self, images: Sequence[PreparedImage]) -> np.ndarray:
        out = self.embedder.embed_prepared(images)
        by_name = {IMAGE_VECTOR: out.h_im}
        from dermground.platform.attributes import get_attribute

        for name, array in out.h_im_a.items():
            by_name[get_attribute(name).vector_name] = array
        stacked = np.stack([by_name[name] for name in VECTOR_NAMES], axis=1)
        if not np.all(np.isfinite(stacked)):
            raise ValueError("the model produced NaN/inf embeddings for this image")
        return stacked

