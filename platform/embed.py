"""The paper's embeddings (§3.3): h_im (image only) and h_im_a (image + question Q(a)).

`Embedder.embed` runs the image and the shared prompt prefix once per image and continues the
question suffixes from its KV cache; `Embedder.embed_reference` does one full forward pass per
input and exists to prove the fast path equal (tests, benchmark).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from dermground.platform.attributes import Attribute, get_attribute, resolve_attributes
from dermground.platform.model.image_inputs import PreparedImage, passes_within, prepare_pixels, rgb_images
from dermground.platform.model.loading import Backbone
from dermground.platform.model.prompts import build_prompt, image_prefix
from dermground.platform.model.shared_prefix import (
    encode_prepared_prefix,
    mean_image_states,
    run_suffixes,
    tokenize_suffixes,
)


@dataclass
class EmbeddingBatch:
    """Embeddings of n images: h_im [n, d] and h_im_a per attribute name [n, d], all float32."""

    h_im: np.ndarray | None
    h_im_a: dict[str, np.ndarray] = field(default_factory=dict)
    dim: int = 0
    fingerprint: str = ""

    def __len__(self) -> int:
        first = self.h_im if self.h_im is not None else next(iter(self.h_im_a.values()), None)
        return 0 if first is None else int(first.shape[0])


def selected_attributes(attributes: Sequence[str] | None) -> tuple[Attribute, ...]:
    """None -> all 16 in registry order; an empty sequence -> none (image-only embedding)."""
    if attributes is None:
        return resolve_attributes(None)
    return tuple(get_attribute(name) for name in attributes)


DEFAULT_SUFFIX_BATCH = 64  # question rows per suffix pass (a CPU's best: docs/BENCHMARKS.md)


def every_question_rows(images: int) -> int:
    """Question rows for every attribute of `images` images: a suffix pass that takes a whole
    prefix pass's questions at once (what a GPU wants; ingest's actors and search both size theirs so)."""
    return images * len(resolve_attributes(None))


class Embedder:
    """Computes h_im and h_im_a for batches of images with one backbone.

    batch_size = images per prefix pass; suffix_batch = question rows per suffix pass (on a
    2-core CPU very large batches were slower than moderate ones: see docs/BENCHMARKS.md);
    max_patches = at most this many image patches per prefix pass (None: no limit), so that a
    batch sized for the card's memory holds many small images or few large ones
    (platform/search_embedder.py measures it on a GPU).
    """

    def __init__(self, backbone: Backbone, batch_size: int = 4, suffix_batch: int = DEFAULT_SUFFIX_BATCH,
                 max_patches: int | None = None) -> None:
        if batch_size < 1 or suffix_batch < 1:
            raise ValueError("batch_size and suffix_batch must be >= 1")
        if max_patches is not None and max_patches < 1:
            raise ValueError("max_patches must be >= 1 (or None)")
        self.backbone = backbone
        self.batch_size = batch_size
        self.suffix_batch = suffix_batch
        self.max_patches = max_patches
        self._suffix_ids: dict[str, list[int]] = {}

    @property
    def dim(self) -> int:
        return self.backbone.hidden_size

    def embed(self, images: Sequence[Image.Image], attributes: Sequence[str] | None = None,
              include_image: bool = True) -> EmbeddingBatch:
        """h_im (if include_image) and h_im_a for each attribute (all 16 when None), shared-prefix path."""
        return self._embed(images, attributes, include_image, apply_rope_delta=True)

    def embed_prepared(self, prepared: Sequence[PreparedImage], attributes: Sequence[str] | None = None,
                       include_image: bool = True) -> EmbeddingBatch:
        """`embed` for images the checkpoint's image processor already prepared (ingest's CPU stage)."""
        return self._embed(prepared, attributes, include_image, apply_rope_delta=True)

    def _embed(self, images: Sequence[Image.Image | PreparedImage], attributes: Sequence[str] | None,
               include_image: bool, apply_rope_delta: bool) -> EmbeddingBatch:
        attrs = selected_attributes(attributes)
        suffixes = self._suffixes(attrs)
        h_im: list[torch.Tensor] = []
        h_im_a: dict[str, list[torch.Tensor]] = {a.name: [] for a in attrs}
        with torch.inference_mode():
            chunks = (chunk for start in range(0, len(images), self.batch_size)
                      for chunk in passes_within(self._prepared(images[start : start + self.batch_size]),
                                                 self.max_patches))
            for chunk in chunks:
                state = encode_prepared_prefix(self.backbone, chunk, use_cache=bool(attrs),
                                               apply_rope_delta=apply_rope_delta)
                if include_image:
                    h_im.append(mean_image_states(state))
                # rows = (image, attribute) pairs, image-major; processed suffix_batch at a time.
                pairs = [(i, a) for i in range(len(chunk)) for a in attrs]
                per_image: dict[str, list[torch.Tensor]] = {a.name: [None] * len(chunk) for a in attrs}  # type: ignore[list-item]
                for row_start in range(0, len(pairs), self.suffix_batch):
                    rows = pairs[row_start : row_start + self.suffix_batch]
                    last, _ = run_suffixes(self.backbone, state, [i for i, _ in rows], [suffixes[a.name] for _, a in rows])
                    for (i, a), vector in zip(rows, last.float()):
                        per_image[a.name][i] = vector
                for name, vectors in per_image.items():
                    h_im_a[name].append(torch.stack(vectors) if vectors else torch.empty(0, self.dim))
        return self._batch(h_im if include_image else None, h_im_a, len(images))

    def embed_reference(self, images: Sequence[Image.Image], attributes: Sequence[str] | None = None,
                        include_image: bool = True) -> EmbeddingBatch:
        """The plain path: a full forward pass of [image] for h_im and of [image, Q(a)] per attribute."""
        attrs = selected_attributes(attributes)
        core = self.backbone.core
        h_im: list[torch.Tensor] = []
        h_im_a: dict[str, list[torch.Tensor]] = {a.name: [] for a in attrs}
        with torch.inference_mode():
            for image in rgb_images(images):
                if include_image:
                    inputs = self._inputs(image_prefix(), image)
                    hidden = core.model(**inputs).last_hidden_state[0].float()
                    image_positions = inputs["input_ids"][0] == core.config.image_token_id
                    h_im.append(hidden[image_positions].mean(dim=0, keepdim=True))
                for a in attrs:
                    hidden = core.model(**self._inputs(build_prompt(a.question), image)).last_hidden_state
                    h_im_a[a.name].append(hidden[:, -1].float())
        return self._batch(h_im if include_image else None, h_im_a, len(images))

    def _inputs(self, text: str, image: Image.Image) -> dict[str, torch.Tensor]:
        inputs = self.backbone.processor(text=[text], images=[image], return_tensors="pt").to(self.backbone.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.backbone.dtype)
        return dict(inputs)

    def _prepared(self, chunk: Sequence[Image.Image | PreparedImage]) -> list[PreparedImage]:
        # Images are prepared a batch at a time: patches take 8x the bytes of the decoded image.
        if all(isinstance(item, PreparedImage) for item in chunk):
            return list(chunk)  # type: ignore[arg-type]
        return prepare_pixels(self.backbone.processor.image_processor, chunk)  # type: ignore[arg-type]

    def _suffixes(self, attrs: Sequence[Attribute]) -> dict[str, list[int]]:
        missing = [a for a in attrs if a.name not in self._suffix_ids]
        if missing:
            for a, ids in zip(missing, tokenize_suffixes(self.backbone, [a.question for a in missing])):
                self._suffix_ids[a.name] = ids
        return {a.name: self._suffix_ids[a.name] for a in attrs}

    def _batch(self, h_im: list[torch.Tensor] | None, h_im_a: dict[str, list[torch.Tensor]], n: int) -> EmbeddingBatch:
        def to_numpy(parts: list[torch.Tensor]) -> np.ndarray:
            if not parts:
                return np.zeros((n, self.dim), dtype=np.float32)
            return torch.cat(parts).to("cpu", torch.float32).numpy()

        return EmbeddingBatch(
            h_im=None if h_im is None else to_numpy(h_im),
            h_im_a={name: to_numpy(parts) for name, parts in h_im_a.items()},
            dim=self.dim,
            fingerprint=self.backbone.fingerprint,
        )
