"""The model for search and prediction: loaded on first use, one forward pass at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from PIL import Image


def is_device_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is torch's out-of-memory error (checked by name: callers need not import torch)."""
    return any(cls.__name__ == "OutOfMemoryError" and cls.__module__.startswith("torch")
               for cls in type(exc).__mro__)


class EmbedderProvider:
    """Gives search an Embedder on first use and runs one model call at a time.

    The model uses every core for one forward pass, so concurrent requests are serialised here
    instead of oversubscribing the CPU; `load` runs once, lazily (queries by isic_id whose
    vectors are stored never need it).
    """

    def __init__(self, load: Callable[[], object],
                 find: Callable[[str], Callable[[], object] | None] | None = None) -> None:
        """find(fingerprint): a loader of the model with that fingerprint, or None (see `provide`)."""
        self._load = load
        self._find = find
        self._embedder = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, embedder: object) -> EmbedderProvider:
        """A provider around an already built Embedder."""
        provider = cls(lambda: embedder)
        provider._embedder = embedder
        return provider

    def embedder(self):  # noqa: ANN201 - dermground.platform.embed.Embedder (imported lazily: torch)
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = self._load()
        return self._embedder

    @property
    def fingerprint(self) -> str:
        return self.embedder().backbone.fingerprint

    def provide(self, fingerprint: str) -> bool:
        """Whether the model has `fingerprint`, after loading the one `find` knows for it instead
        (the API follows a switch to a version built with another adapter)."""
        if self.fingerprint == fingerprint:
            return True
        load = self._find(fingerprint) if self._find is not None else None
        if load is None:
            return False
        with self._lock:
            if self._embedder is None or self._embedder.backbone.fingerprint != fingerprint:
                self._embedder = None  # the old model goes before the new one loads (memory)
                self._embedder = load()
                self._load = load  # only once it loaded: a failed load leaves the previous model to reload
        return self.fingerprint == fingerprint

    def embed(self, images: Sequence[Image.Image], attributes: Sequence[str], include_image: bool):  # noqa: ANN201
        return self.run(lambda embedder: embedder.embed(images, attributes, include_image=include_image))

    def run(self, work: Callable[[object], object]) -> object:
        """work(embedder) with the model to itself (e.g. attribute prediction on its backbone)."""
        embedder = self.embedder()
        with self._lock:
            return work(embedder)
