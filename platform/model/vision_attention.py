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


def attend_chunks(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lengths: list[int],
                  scaling: float, dropout: float = 0.0) -> torch.Tensor:
    """Self-attention inside each chunk of a packed sequence, chunks of one length in one call.

    query/key/value: (tokens, heads, head_dim), the chunks laid end to end with `lengths`.
    Returns (tokens, heads, head_dim) in the same token order.
    """
    tokens, heads, head_dim = query.shape
    if sum(lengths) != tokens:
        raise ValueError(f"chunk lengths sum to {sum(lengths)}, the sequence has {tokens} tokens")
    starts = [0]
    for length in lengths[:-1]:
        starts.append(starts[-1] + length)
    by_length: dict[int, list[int]] = {}
    for start, length in zip(starts, lengths, strict=True):
        by_length.setdefault(length, []).append(start)

    if len(by_length) == 1:  # one size (the common case): a view, no gather
        (length,) = by_length
        return _attend_stacked(query, key, value, tokens // length, length, scaling, dropout)

    pieces: list[torch.Tensor] = []
    order: list[torch.Tensor] = []
    offsets = None
    for length, group_starts in by_length.items():
        if offsets is None or offsets.numel() != length:
            offsets = torch.arange(length, device=query.device)
        index = (torch.tensor(group_starts, device=query.device)[:, None] + offsets).reshape(-1)
        q, k, v = (t.index_select(0, index) for t in (query, key, value))
        pieces.append(_attend_stacked(q, k, v, len(group_starts), length, scaling, dropout))
        order.append(index)
    stacked = torch.cat(pieces)
    # stacked[i] belongs at token order[i]; gathering by the inverse permutation keeps autograd simple
    inverse = torch.empty(tokens, dtype=torch.long, device=query.device)
    inverse[torch.cat(order)] = torch.arange(tokens, device=query.device)
    return stacked.index_select(0, inverse)


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
        out = attend_chunks(query, key, value, chunk_lengths(cu_seqlens), self.scaling, dropout)
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
