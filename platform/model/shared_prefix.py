"""Run [system, user, image] once per image and continue many question suffixes from its KV cache.

Qwen2-VL gives image tokens 3-D rotary positions (time, row, column), so the text after an image
does not continue at "number of tokens so far": it continues at (largest prefix position + 1),
i.e. the sequence length plus the model's rope delta. Suffixes therefore get explicit 3-D
position ids; the implicit path depends on mutable model state and breaks with attention masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import DynamicCache, Qwen2VLForConditionalGeneration
from transformers.cache_utils import DynamicLayer

from dermground.platform.model.image_inputs import PreparedImage, prepare_pixels
from dermground.platform.model.loading import Backbone
from dermground.platform.model.patch_dtype import patch_dtype_of
from dermground.platform.model.processor import ImageOnlyQwen2VLProcessor
from dermground.platform.model.prompts import image_prefix, question_suffix


@dataclass
class PrefixState:
    """The result of one batched prefix pass (rows = images, left padded)."""

    hidden: torch.Tensor  # [b, L, d] last-layer states after the final norm
    attention_mask: torch.Tensor  # [b, L]
    image_mask: torch.Tensor  # [b, L] True at image-token positions
    next_position: torch.Tensor  # [b] rotary position of the first suffix token
    cache: DynamicCache | None  # None when the pass ran without use_cache


def prefix_inputs(processor: ImageOnlyQwen2VLProcessor, prepared: Sequence[PreparedImage],
                  device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The model inputs of [system, user, image] for prepared images (rows left padded).

    Equal to `processor(text=[image_prefix()] * n, images=..., padding=True)` for the same images
    (tests/test_image_inputs.py checks it for both families and Qwen's tokenizer).
    """
    if not prepared:
        raise ValueError("prefix_inputs needs at least one image")
    grids = np.array([p.grid_thw for p in prepared], dtype=np.int64)
    texts = [image_prefix().replace(processor.image_token,
                                    processor.replace_image_token({"image_grid_thw": grids}, image_idx=i), 1)
             for i in range(len(prepared))]
    tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
    mm_types = processor.create_mm_token_type_ids(tokens["input_ids"].tolist())
    dtypes = {patch_dtype_of(p.pixel_values) for p in prepared}
    if len(dtypes) > 1:
        raise ValueError(f"one model pass got image patches of several dtypes ({', '.join(sorted(dtypes))})")
    pixels = np.concatenate([p.pixel_values for p in prepared]) if len(prepared) > 1 else prepared[0].pixel_values
    pixel_values = torch.from_numpy(np.ascontiguousarray(pixels))
    if dtypes == {"bfloat16"}:
        pixel_values = pixel_values.view(torch.bfloat16)  # the bit patterns patch_dtype.py made: no copy
    return {
        "input_ids": tokens["input_ids"].to(device),
        "attention_mask": tokens["attention_mask"].to(device),
        "mm_token_type_ids": torch.tensor(mm_types, dtype=torch.long, device=device),
        "pixel_values": pixel_values.to(device),
        "image_grid_thw": torch.from_numpy(grids).to(device),
    }


def encode_prefix(backbone: Backbone, images: Sequence[Image.Image], *, use_cache: bool = True,
                  apply_rope_delta: bool = True) -> PrefixState:
    """One forward pass over [system, user, image] for a batch of images.

    apply_rope_delta=False continues suffixes at the plain token count: wrong for Qwen2-VL; it
    exists only as a negative control for tests.
    """
    return encode_prepared_prefix(backbone, prepare_pixels(backbone.processor.image_processor, images),
                                  use_cache=use_cache, apply_rope_delta=apply_rope_delta)


def encode_prepared_prefix(backbone: Backbone, prepared: Sequence[PreparedImage], *, use_cache: bool = True,
                           apply_rope_delta: bool = True) -> PrefixState:
    """`encode_prefix` for images already prepared (platform/model/image_inputs.py): ingest's
    actors get them from a CPU stage and run only the model."""
    core = backbone.core
    inputs = prefix_inputs(backbone.processor, prepared, backbone.device)
    if inputs["pixel_values"].dtype not in (torch.float32, backbone.dtype):
        # Rounded for another model: widening them back cannot restore what the rounding lost.
        raise TypeError(f"image patches in {inputs['pixel_values'].dtype} for a model running in {backbone.dtype}; "
                        "prepare them in float32 or in the model's dtype")
    mask = inputs["attention_mask"]
    positions, _ = core.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"], attention_mask=mask
    )
    out = core.model(
        input_ids=inputs["input_ids"],
        attention_mask=mask,
        position_ids=positions,
        pixel_values=inputs["pixel_values"].to(backbone.dtype),
        image_grid_thw=inputs["image_grid_thw"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        use_cache=use_cache,
    )
    if apply_rope_delta:
        next_position = positions.masked_fill(~mask.bool()[None], -1).amax(dim=(0, 2)) + 1
    else:
        next_position = mask.sum(dim=1)
    return PrefixState(
        hidden=out.last_hidden_state,
        attention_mask=mask,
        image_mask=inputs["input_ids"] == core.config.image_token_id,
        next_position=next_position,
        cache=_output_cache(out),
    )


def mean_image_states(state: PrefixState) -> torch.Tensor:
    """h_im: mean of the last-layer states over each row's image-token positions, float32 [b, d]."""
    weights = state.image_mask.to(torch.float32).unsqueeze(-1)
    return (state.hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def tokenize_suffixes(backbone: Backbone, questions: Sequence[str]) -> list[list[int]]:
    """Token ids of each question suffix (no special tokens added: the prompt text carries them)."""
    encoded = backbone.tokenizer([question_suffix(q) for q in questions], add_special_tokens=False)
    return [list(ids) for ids in encoded["input_ids"]]


@dataclass
class SuffixState:
    """Rows continuing a prefix: which image each row extends, its tokens, mask and positions so far."""

    cache: DynamicCache
    attention_mask: torch.Tensor  # [r, prefix + tokens so far]
    last_position: torch.Tensor  # [r] rotary position of each row's last real token


def run_suffixes(
    backbone: Backbone, state: PrefixState, image_rows: Sequence[int], suffixes: Sequence[Sequence[int]],
    *, copy_prefix: bool = False,
) -> tuple[torch.Tensor, SuffixState]:
    """Continue prefix rows `image_rows[i]` with token lists `suffixes[i]` in one batched pass.

    Suffixes are right padded; returns the last-layer state of each row's last real token [r, d]
    and the state needed to keep decoding from there (greedy generation). The rows share their
    image's prefix cache (`_SharedPrefixLayer`); copy_prefix=True copies it per row first, the
    previous path, kept only as the reference for tests and benchmarks/embed.py.
    """
    device = backbone.device
    rows = torch.tensor(list(image_rows), device=device)
    # Padded on the host and copied once: on a GPU a copy per row (16 per image) is as many waits.
    width = max(len(s) for s in suffixes)
    pad_id = backbone.tokenizer.pad_token_id
    ids = torch.tensor([[*s, *[pad_id] * (width - len(s))] for s in suffixes], dtype=torch.long, device=device)
    lengths = torch.tensor([len(s) for s in suffixes], device=device)
    suffix_mask = (torch.arange(width, device=device)[None] < lengths[:, None]).to(state.attention_mask.dtype)
    attention_mask = torch.cat([state.attention_mask[rows], suffix_mask], dim=1)
    start = state.next_position[rows]
    positions = (start[:, None] + torch.arange(width, device=device)[None]).unsqueeze(0).expand(3, -1, -1)
    if copy_prefix:
        cache = DynamicCache(ddp_cache_data=[(keys[rows], values[rows]) for keys, values, *_ in state.cache])
    else:
        cache = _shared_prefix_cache(state.cache, image_rows)
    hidden = _decode(backbone.core, ids, attention_mask, positions, cache)
    last = hidden[torch.arange(len(suffixes), device=device), lengths - 1]
    return last, SuffixState(cache=cache, attention_mask=attention_mask, last_position=start + lengths - 1)


def step(backbone: Backbone, suffix: SuffixState, tokens: torch.Tensor) -> torch.Tensor:
    """Feed one more token per row (greedy decoding); returns the new last-layer states [r, d]."""
    suffix.attention_mask = torch.cat([suffix.attention_mask, torch.ones_like(suffix.attention_mask[:, :1])], dim=1)
    suffix.last_position = suffix.last_position + 1
    positions = suffix.last_position[None, :, None].expand(3, -1, 1)
    hidden = _decode(backbone.core, tokens[:, None], suffix.attention_mask, positions, suffix.cache)
    return hidden[:, -1]


def _decode(core: Qwen2VLForConditionalGeneration, ids: torch.Tensor, attention_mask: torch.Tensor,
            positions: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    out = core.model(input_ids=ids, attention_mask=attention_mask, position_ids=positions,
                     use_cache=True, **{_CACHE_KWARG: cache})
    return out.last_hidden_state


class _SharedPrefixLayer(DynamicLayer):
    """One layer's cache for suffix rows that continue the images of a prefix pass, without a copy per row.

    Until the suffix pass writes its keys, the layer holds the prefix pass's own tensors ([images,
    heads, L, dim], shared by every row of an image); the first update writes each row's prefix
    and its suffix into one new tensor, once (the stock layer copied each row's prefix twice before
    that: an index and its own first concatenation). Later updates (decoding) concatenate as usual.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, runs: list[tuple[int, int, int]], rows: int) -> None:
        super().__init__()
        self.keys, self.values = keys, values  # the prefix's: read, never written
        self.device = keys.device
        self.is_initialized = True
        self._runs = runs  # (image, first row, end row): consecutive rows continuing one image
        self._rows: int | None = rows

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object,
               **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rows is None:
            return super().update(key_states, value_states, *args, **kwargs)
        self.keys = self._gather(self.keys, key_states)
        self.values = self._gather(self.values, value_states)
        self._rows = None
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return int(self.keys.shape[-2])

    def _gather(self, prefix: torch.Tensor, suffix: torch.Tensor) -> torch.Tensor:
        length = prefix.shape[-2]
        out = prefix.new_empty((self._rows, prefix.shape[1], length + suffix.shape[-2], prefix.shape[-1]))
        for image, first, end in self._runs:
            out[first:end, :, :length].copy_(prefix[image : image + 1])  # broadcast over the image's rows
        out[:, :, length:].copy_(suffix)
        return out


def _shared_prefix_cache(prefix: DynamicCache, image_rows: Sequence[int]) -> DynamicCache:
    """A cache whose rows continue prefix rows `image_rows` (any order) without copying them yet."""
    runs: list[tuple[int, int, int]] = []
    for row, image in enumerate(image_rows):
        if runs and runs[-1][0] == image and runs[-1][2] == row:
            runs[-1] = (image, runs[-1][1], row + 1)
        else:
            runs.append((int(image), row, row + 1))
    cache = DynamicCache()
    cache.layers = [_SharedPrefixLayer(keys, values, runs, len(image_rows)) for keys, values, *_ in prefix]
    return cache


def _output_cache(out: object) -> DynamicCache | None:
    try:
        return out.cache  # type: ignore[attr-defined]
    except AttributeError:  # transformers < 5.24 names it past_key_values
        return out.past_key_values  # type: ignore[attr-defined]


def _cache_kwarg() -> str:
    # transformers 5.24 renamed `past_key_values` to `cache` (the old name still works, with a warning).
    import inspect

    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    return "cache" if "cache" in inspect.signature(Qwen2VLModel.forward).parameters else "past_key_values"


_CACHE_KWARG = _cache_kwarg()
