"""Vision attention batched over the images of a batch (Qwen2-VL and Qwen2.5-VL vision towers).

transformers' vision attention packs every image of a batch into one sequence and, unless flash
attention is installed, runs one SDPA call per image (per window in Qwen2.5-VL's windowed layers):
`torch.split` over `cu_seqlens`, a Python loop, `torch.cat`. On a GPU that is one small kernel
per image per layer, which leaves the card idle between launches. Here the chunks of equal length
(every image of one size; every full window) are stacked into one (n, heads, length, dim) tensor
and attended in one SDPA call: the same arithmetic per chunk, far fewer calls. Chunks never see
each other, exactly as in the loop, so no mask is needed (which keeps SDPA on its fused kernels).

`batch_vision_attention(model)` swaps the class of the stock attention modules for a subclass
that overrides only `forward`; weights, LoRA wrappers on `qkv`/`proj` and state dicts are
untouched. With flash attention requested the stock varlen path is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen25
from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen2
from transformers.utils.generic import is_flash_attention_requested

log = logging.getLogger(__name__)

# Attention scores one SDPA call may hold if torch falls back to its math kernel (which
# materialises them): 2**28 elements = 512 MiB in bfloat16. Fused kernels never hold them, so
# this only splits very large groups into several calls.
MAX_SCORES_PER_CALL = 1 << 28


def chunk_lengths(cu_seqlens: torch.Tensor) -> list[int]:
    """Lengths of the packed chunks (images or windows) from their cumulative boundaries."""
    return (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()


@dataclass(frozen=True)
class ChunkPlan:
    """How one packed sequence is attended: per chunk length, how many chunks and which tokens.

    A group's index lists its tokens, chunk by chunk, and `inverse` puts the groups' outputs back
    in token order; both are None when every chunk has one length (a view, no gather).
    """

    tokens: int
    groups: tuple[tuple[int, int, torch.Tensor | None], ...]  # (length, chunks, index)
    inverse: torch.Tensor | None


def plan_chunks(lengths: list[int], device: torch.device) -> ChunkPlan:
    """The plan of a packed sequence whose chunks have these lengths, index tensors on `device`."""
    tokens = sum(lengths)
    starts = [0]
    for length in lengths[:-1]:
        starts.append(starts[-1] + length)
    by_length: dict[int, list[int]] = {}
    for start, length in zip(starts, lengths, strict=True):
        by_length.setdefault(length, []).append(start)
    if len(by_length) == 1:
        (length,) = by_length
        return ChunkPlan(tokens, ((length, tokens // length, None),), None)
    groups = []
    for length, group_starts in by_length.items():
        offsets = torch.arange(length, device=device)
        index = (torch.tensor(group_starts, device=device)[:, None] + offsets).reshape(-1)
        groups.append((length, len(group_starts), index))
    inverse = torch.empty(tokens, dtype=torch.long, device=device)
    inverse[torch.cat([index for _, _, index in groups])] = torch.arange(tokens, device=device)
    return ChunkPlan(tokens, tuple(groups), inverse)


class _PlanCache:
    """Plans of the last few `cu_seqlens` tensors, by identity.

    A vision tower computes its boundaries once per forward and hands the same tensor to every
    block (Qwen2.5-VL: one for its windowed blocks, one for its full ones). Reading the lengths
    back is a device-to-host copy, which on a GPU waits for every kernel queued before it; planning
    once per tensor makes that one wait per forward instead of one per block."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: dict[tuple[int, torch.device], tuple[torch.Tensor, int, ChunkPlan]] = {}

    def plan(self, cu_seqlens: torch.Tensor, device: torch.device) -> ChunkPlan:
        key = (id(cu_seqlens), device)  # a model split over cards plans once per card
        entry = self._entries.get(key)
        # The entry keeps its tensor alive, so its id cannot be reused; _version catches in-place edits.
        version = _version_of(cu_seqlens)
        if entry is not None and entry[0] is cu_seqlens and entry[1] == version:
            self.hits += 1
            return entry[2]
        self.misses += 1
        plan = plan_chunks(chunk_lengths(cu_seqlens), device)
        if len(self._entries) >= self.size:
            # Threads may embed at once (the API): another one may have evicted the oldest already.
            self._entries.pop(next(iter(self._entries), key), None)
        self._entries[key] = (cu_seqlens, version, plan)
        return plan


def _version_of(tensor: torch.Tensor) -> int:
    # Tensors made under torch.inference_mode() keep no version counter (nor are edited by the towers).
    return -1 if tensor.is_inference() else tensor._version


_PLANS = _PlanCache()


def plan_cache_info() -> tuple[int, int]:
    """(hits, misses) of the per-`cu_seqlens` plan cache since the process started."""
    return _PLANS.hits, _PLANS.misses


def attend_chunks(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lengths: list[int] | ChunkPlan,
                  scaling: float, dropout: float = 0.0) -> torch.Tensor:
    """Self-attention inside each chunk of a packed sequence, chunks of one length in one call.

    query/key/value: (tokens, heads, head_dim), the chunks laid end to end with `lengths` (or
    their plan). Returns (tokens, heads, head_dim) in the same token order.
    """
    tokens = query.shape[0]
    plan = lengths if isinstance(lengths, ChunkPlan) else plan_chunks(lengths, query.device)
    if plan.tokens != tokens:
        raise ValueError(f"chunk lengths sum to {plan.tokens}, the sequence has {tokens} tokens")
    if plan.inverse is None:  # one size (the common case): a view, no gather
        ((length, chunks, _),) = plan.groups
        return _attend_stacked(query, key, value, chunks, length, scaling, dropout)
    pieces = []
    for length, chunks, index in plan.groups:
        q, k, v = (t.index_select(0, index) for t in (query, key, value))  # type: ignore[arg-type]
        pieces.append(_attend_stacked(q, k, v, chunks, length, scaling, dropout))
    # The outputs come group by group; gathering by the inverse permutation (not scattering) keeps autograd simple.
    return torch.cat(pieces).index_select(0, plan.inverse)


def _attend_stacked(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, chunks: int, length: int,
                    scaling: float, dropout: float) -> torch.Tensor:
    """Attention over `chunks` consecutive chunks of `length` tokens each: (chunks*length, heads, dim)."""
    heads, head_dim = query.shape[1], query.shape[2]
    per_call = max(1, MAX_SCORES_PER_CALL // (heads * length * length))
    outputs = []
    for first in range(0, chunks, per_call):
        n = min(per_call, chunks - first)
        rows = slice(first * length, (first + n) * length)
        q, k, v = (t[rows].view(n, length, heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=False, scale=scaling)
        outputs.append(out.transpose(1, 2).reshape(n * length, heads, head_dim))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class _BatchedForward:
    """forward() of a Qwen vision attention module with chunks of equal length attended together."""

    qkv: nn.Module
    proj: nn.Module
    num_heads: int
    scaling: float
    attention_dropout: float
    training: bool
    _rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]]

    def forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                max_seqlen: int | None = None, **kwargs: object) -> torch.Tensor:
        if is_flash_attention_requested(self.config):  # type: ignore[attr-defined] - varlen kernels batch already
            return super().forward(hidden_states, cu_seqlens, position_embeddings=position_embeddings,  # type: ignore[misc]
                                   max_seqlen=max_seqlen, **kwargs)
        seq_length = hidden_states.shape[0]
        query, key, value = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings  # type: ignore[misc] - both towers always pass them
        query, key = type(self)._rotary(query, key, cos, sin)
        dropout = self.attention_dropout if self.training else 0.0
        out = attend_chunks(query, key, value, _PLANS.plan(cu_seqlens, query.device), self.scaling, dropout)
        return self.proj(out.reshape(seq_length, -1))


class BatchedQwen2VLVisionAttention(_BatchedForward, qwen2.VisionAttention):
    """Qwen2-VL's vision attention, chunks of equal length in one SDPA call."""

    _rotary = staticmethod(qwen2.apply_rotary_pos_emb_vision)


class BatchedQwen25VLVisionAttention(_BatchedForward, qwen25.Qwen2_5_VLVisionAttention):
    """Qwen2.5-VL's vision attention (full and windowed layers), chunks of equal length in one SDPA call."""

    _rotary = staticmethod(qwen25.apply_rotary_pos_emb_vision)


_BATCHED_CLASS: dict[type, type] = {
    qwen2.VisionAttention: BatchedQwen2VLVisionAttention,
    qwen25.Qwen2_5_VLVisionAttention: BatchedQwen25VLVisionAttention,
}


def batch_vision_attention(model: nn.Module) -> int:
    """Switch the model's SDPA vision attention modules to the batched forward; returns how many.

    Modules under another implementation (eager, flash) are left as they are: eager is kept for
    its exact arithmetic, flash already attends every chunk in one varlen call.
    """
    switched = 0
    for module in model.modules():
        batched = _BATCHED_CLASS.get(type(module))
        if batched is None or module.config._attn_implementation != "sdpa":  # type: ignore[union-attr]
            continue
        module.__class__ = batched
        switched += 1
    if switched:
        log.debug("vision attention batched over images in %d layers", switched)
    return switched


def unbatch_vision_attention(model: nn.Module) -> int:
    """Switch batched vision attention modules back to transformers' own class; returns how many."""
    stock = {batched: original for original, batched in _BATCHED_CLASS.items()}
    switched = 0
    for module in model.modules():
        original = stock.get(type(module))
        if original is not None:
            module.__class__ = original
            switched += 1
    return switched


def is_vision_attention_batched(model: nn.Module) -> bool:
    """Whether any vision attention module of the model runs the batched forward."""
    return any(isinstance(m, _BatchedForward) for m in model.modules())
