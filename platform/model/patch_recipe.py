"""Qwen2-VL's image preparation in numpy and PIL alone, for ingest's CPU stage.

transformers' image processor pulls in torch and transformers (~3.5 s of imports per worker on
the 2-core machine, ~0.5 GB of memory); the CPU stage only needs what it computes: resize to the
patch grid (`smart_resize`, bicubic), rescale, normalise, cut into flattened patches. `PatchRecipe`
does exactly that, with the processor's own order of operations and dtypes, so its output is
bit-identical to `Qwen2VLImageProcessorPil` (tests/test_image_inputs.py checks it on many sizes,
both families and a hub folder). Its settings are read from the checkpoint folder's processor
config; the embedding actor, which loads the real processor, refuses to run if they differ from
the processor's (`PatchRecipe.from_image_processor`), so the two can never disagree silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dermground.platform.model.image_inputs import PreparedImage, rgb_images

# transformers' defaults for Qwen2VLImageProcessor (OPENAI_CLIP mean/std, 56*56 .. 28*28*1280 pixels).
_DEFAULTS: dict[str, object] = {
    "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280, "patch_size": 14, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": (0.48145466, 0.4578275, 0.40821073),
    "image_std": (0.26862954, 0.26130258, 0.27577711), "rescale_factor": 1 / 255, "resample": 3,
}
_MUST_BE_ON = ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb")


class RecipeUnsupported(ValueError):
    """A processor setting this recipe does not reproduce (ingest refuses such a checkpoint before Ray starts)."""


@dataclass(frozen=True)
class PatchRecipe:
    """The numbers that define Qwen2-VL's image preparation."""

    min_pixels: int
    max_pixels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    rescale_factor: float
    resample: int

    @classmethod
    def from_settings(cls, settings: Mapping[str, object]) -> PatchRecipe:
        """From a processor config's image settings (raises RecipeUnsupported for what it cannot do)."""
        off = [name for name in _MUST_BE_ON if settings.get(name, True) is not True]
        if off:
            raise RecipeUnsupported(f"the image processor config turns off {', '.join(off)}")
        values = {**_DEFAULTS}
        size = settings.get("size")
        if isinstance(size, Mapping):
            values["min_pixels"] = size.get("shortest_edge", values["min_pixels"])
            values["max_pixels"] = size.get("longest_edge", values["max_pixels"])
        for key in _DEFAULTS:
            if settings.get(key) is not None:
                values[key] = settings[key]
        return cls(int(values["min_pixels"]), int(values["max_pixels"]), int(values["patch_size"]),  # type: ignore[call-overload]
                   int(values["temporal_patch_size"]), int(values["merge_size"]),  # type: ignore[call-overload]
                   tuple(float(x) for x in values["image_mean"]),  # type: ignore[attr-defined]
                   tuple(float(x) for x in values["image_std"]),  # type: ignore[attr-defined]
                   float(values["rescale_factor"]), int(values["resample"]))  # type: ignore[arg-type]

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> PatchRecipe:
        """From a checkpoint folder: processor_config.json's image_processor, else preprocessor_config.json."""
        path = Path(model_dir)
        nested = path / "processor_config.json"
        if nested.is_file():
            settings = json.loads(nested.read_text()).get("image_processor")
            if isinstance(settings, Mapping):
                return cls.from_settings(settings)
        flat = path / "preprocessor_config.json"
        if flat.is_file():
            return cls.from_settings(json.loads(flat.read_text()))
        raise RecipeUnsupported(f"{path} has no processor_config.json or preprocessor_config.json")

    @classmethod
    def from_image_processor(cls, processor: object) -> PatchRecipe:
        """From a loaded transformers image processor (its resolved attributes)."""
        size = processor.size  # type: ignore[attr-defined]
        settings = {name: getattr(processor, name) for name in (*_DEFAULTS, *_MUST_BE_ON) if hasattr(processor, name)}
        settings["size"] = {"shortest_edge": size.shortest_edge, "longest_edge": size.longest_edge}
        settings.pop("min_pixels", None), settings.pop("max_pixels", None)
        return cls.from_settings(settings)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Qwen2-VL's smart_resize: multiples of patch x merge, pixel count within [min, max]."""
        factor = self.patch_size * self.merge_size
        if max(height, width) / min(height, width) > 200:
            raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
        h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
        if h_bar * w_bar > self.max_pixels:
            beta = math.sqrt((height * width) / self.max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif h_bar * w_bar < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h_bar = math.ceil(height * beta / factor) * factor
            w_bar = math.ceil(width * beta / factor) * factor
        return h_bar, w_bar

    def prepare(self, image: Image.Image) -> PreparedImage:
        """One image as the vision tower takes it (the processor's steps, in its order and dtypes)."""
        rgb = rgb_images([image])[0]
        height, width = self.grid_size(rgb.height, rgb.width)
        resized = np.asarray(rgb.resize((width, height), resample=self.resample))  # HWC uint8
        scaled = (resized.astype(np.float64) * self.rescale_factor).astype(np.float32)
        normed = (scaled - np.array(self.image_mean, dtype=np.float32)) / np.array(self.image_std, dtype=np.float32)
        return PreparedImage(*self._patchify(normed.transpose(2, 0, 1)))

    def _patchify(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        channels, height, width = image.shape
        grid_h, grid_w = height // p, width // p
        patches = image.reshape(channels, grid_h // m, m, p, grid_w // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
        patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], t, *patches.shape[5:]))
        return patches.reshape(grid_h * grid_w, channels * t * p * p), (1, grid_h, grid_w)
