"""Vision attention batched over images: the same numbers as transformers' loop over images.

Equality is exact here (float32 on the CPU: each chunk goes through the same SDPA kernel whether
alone or stacked with others); on a GPU the kernels may block differently, so callers must not
rely on bit equality there.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional

from dermground.platform.model import vision_attention
from dermground.platform.model.loading import load_backbone
from dermground.platform.model.tiny import build_tiny_model
from dermground.platform.model.vision_attention import (
    BatchedQwen2VLVisionAttention,
    BatchedQwen25VLVisionAttention,
    attend_chunks,
    batch_vision_attention,
    is_vision_attention_batched,
    unbatch_vision_attention,
)

PATCH_DIM = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch
# images of two sizes, interleaved: chunks of one length are not adjacent in the packed sequence
GRIDS = torch.tensor([[1, 8, 8], [1, 12, 8], [1, 8, 8], [1, 8, 12]])


def per_chunk_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lengths: list[int],
                        scaling: float) -> torch.Tensor:
    """transformers' loop: one SDPA call per chunk, results concatenated."""
    outs = []
    for q, k, v in zip(*(torch.split(t, lengths) for t in (query, key, value)), strict=True):
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        outs.append(functional.scaled_dot_product_attention(q, k, v, scale=scaling)[0].transpose(0, 1))
    return torch.cat(outs)


def random_qkv(tokens: int, heads: int = 2, dim: int = 8, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(tokens, heads, dim, generator=generator, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("lengths", [[4, 4, 4], [3, 5, 3, 5, 2], [7]])
def test_chunks_attended_together_equal_the_loop_over_chunks_with_gradients(lengths: list[int]) -> None:
    qkv = random_qkv(sum(lengths))
    ref_qkv = [t.detach().clone().requires_grad_(True) for t in qkv]
    out = attend_chunks(*qkv, lengths, scaling=0.3)
    ref = per_chunk_reference(*ref_qkv, lengths, scaling=0.3)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    weights = torch.randn_like(ref)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    for got, want in zip(qkv, ref_qkv, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=0, atol=1e-6)


def test_a_chunk_attends_only_to_itself() -> None:
    query, key, value = (t.detach() for t in random_qkv(6))
    first = attend_chunks(query, key, value, [3, 3], scaling=0.5)[:3]
    value[3:] += 100.0  # the second chunk's values change; the first chunk's output must not
    assert torch.equal(attend_chunks(query, key, value, [3, 3], scaling=0.5)[:3], first)


def test_a_group_too_large_for_one_call_is_split_without_changing_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    lengths = [4] * 5 + [6] * 3
    qkv = [t.detach() for t in random_qkv(sum(lengths))]
    whole = attend_chunks(*qkv, lengths, scaling=0.3)
    monkeypatch.setattr(vision_attention, "MAX_SCORES_PER_CALL", 2 * 4 * 4 * 2)  # two chunks of 4 per call
    torch.testing.assert_close(attend_chunks(*qkv, lengths, scaling=0.3), whole, rtol=0, atol=1e-6)


def test_lengths_that_do_not_cover_the_sequence_are_refused() -> None:
    with pytest.raises(ValueError, match="sum to 5, the sequence has 6 tokens"):
        attend_chunks(*(t.detach() for t in random_qkv(6)), [2, 3], scaling=1.0)


@pytest.mark.parametrize(("family", "batched_class"), [("qwen2_vl", BatchedQwen2VLVisionAttention),
                                                       ("qwen2_5_vl", BatchedQwen25VLVisionAttention)])
def test_the_vision_tower_batched_equals_the_stock_one_in_values_and_gradients(family: str, batched_class: type) -> None:
    model, _ = build_tiny_model(seed=0, preset="tiny", image_size=112, family=family)
    stock = model.model.visual
    stock.config._attn_implementation = "sdpa"
    batched = copy.deepcopy(stock)
    assert batch_vision_attention(batched) == len(batched.blocks)
    assert all(type(block.attn) is batched_class for block in batched.blocks)
    pixels = torch.randn(int(GRIDS.prod(-1).sum()), PATCH_DIM, generator=torch.Generator().manual_seed(1))

    for tower in (stock, batched):
        tower.train()
        tower.zero_grad()
    want = stock(pixels, grid_thw=GRIDS)
    got = batched(pixels, grid_thw=GRIDS)
    want = getattr(want, "pooler_output", want)
    got = getattr(got, "pooler_output", got)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    want.square().sum().backward()
    got.square().sum().backward()
    for (name, p_stock), p_batched in zip(stock.named_parameters(), batched.parameters(), strict=True):
        torch.testing.assert_close(p_batched.grad, p_stock.grad, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(("family", "plans"), [("qwen2_vl", 1), ("qwen2_5_vl", 2)])
def test_a_tower_forward_plans_its_chunks_once_per_boundary_tensor_not_per_block(family: str, plans: int) -> None:
    # Reading the chunk lengths is a device-to-host copy (a GPU waits for its queue): once per
    # forward for Qwen2-VL, once per kind of block (windowed, full) for Qwen2.5-VL, not per block.
    model, _ = build_tiny_model(seed=0, preset="tiny", image_size=112, family=family)
    tower = model.model.visual
    tower.config._attn_implementation = "sdpa"
    batch_vision_attention(tower)
    pixels = torch.randn(int(GRIDS.prod(-1).sum()), PATCH_DIM, generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # each forward makes new boundary tensors: planned again, never a stale plan
        hits, misses = vision_attention.plan_cache_info()
        with torch.no_grad():
            tower(pixels, grid_thw=GRIDS)
        new_hits, new_misses = vision_attention.plan_cache_info()
        assert new_misses - misses == plans
        assert new_hits - hits == len(tower.blocks) - plans


def test_towers_running_in_several_threads_each_get_their_own_plans() -> None:
    # The API embeds in worker threads: more boundary tensors alive at once than the cache holds.
    from concurrent.futures import ThreadPoolExecutor

    model, _ = build_tiny_model(seed=0, preset="tiny", image_size=112, family="qwen2_5_vl")
    tower = model.model.visual
    tower.config._attn_implementation = "sdpa"
    batch_vision_attention(tower)
    grids = [GRIDS, GRIDS[:2], GRIDS[1:], torch.tensor([[1, 12, 12], [1, 8, 8]])] * 2
    inputs = [torch.randn(int(g.prod(-1).sum()), PATCH_DIM, generator=torch.Generator().manual_seed(i))
              for i, g in enumerate(grids)]

    def run(i: int) -> torch.Tensor:
        with torch.no_grad():
            out = tower(inputs[i], grid_thw=grids[i])
        return getattr(out, "pooler_output", out)

    alone = [run(i) for i in range(len(grids))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(run, range(len(grids))))
    for want, got in zip(alone, together, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_a_plan_follows_its_boundaries_when_they_are_edited_in_place() -> None:
    query, key, value = (t.detach() for t in random_qkv(12))
    cu_seqlens = torch.tensor([0, 4, 8, 12], dtype=torch.int32)
    first = vision_attention._PLANS.plan(cu_seqlens, query.device)
    assert vision_attention._PLANS.plan(cu_seqlens, query.device) is first
    cu_seqlens[1:3] = torch.tensor([3, 9], dtype=torch.int32)  # lengths 3, 6, 3
    replanned = vision_attention._PLANS.plan(cu_seqlens, query.device)
    assert replanned is not first and sorted(g[0] for g in replanned.groups) == [3, 6]
    torch.testing.assert_close(attend_chunks(query, key, value, replanned, scaling=0.5),
                               per_chunk_reference(query, key, value, [3, 6, 3], scaling=0.5), rtol=0, atol=1e-6)


def test_unbatching_restores_transformers_classes() -> None:
    model, _ = build_tiny_model(seed=0, preset="tiny", image_size=112, family="qwen2_5_vl")
    model.model.visual.config._attn_implementation = "sdpa"
    stock = [type(block.attn) for block in model.model.visual.blocks]
    assert batch_vision_attention(model) == len(stock)
    assert batch_vision_attention(model) == 0  # already batched
    assert unbatch_vision_attention(model) == len(stock)
    assert [type(block.attn) for block in model.model.visual.blocks] == stock
    assert not is_vision_attention_batched(model)


def test_eager_attention_is_left_as_it_is() -> None:
    model, _ = build_tiny_model(seed=0, preset="tiny", image_size=112)
    model.model.visual.config._attn_implementation = "eager"
    assert batch_vision_attention(model) == 0
    assert not is_vision_attention_batched(model)


def lesion_like_images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(112, 112), (140, 112)]  # two sizes: two groups in one batch
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 2][::-1], 3), dtype=np.uint8)) for i in range(count)]


def test_the_loader_batches_by_default_and_both_modes_give_the_same_vectors(
        tiny_model_dir, make_tiny_adapter, tmp_path) -> None:  # noqa: ANN001 - fixtures
    from dermground.platform.embed import Embedder

    adapter = make_tiny_adapter(tiny_model_dir, tmp_path / "adapter", seed=3)  # LoRA on the vision qkv/proj too
    batched = load_backbone(tiny_model_dir, adapter, device="cpu", dtype="float32")
    stock = load_backbone(tiny_model_dir, adapter, device="cpu", dtype="float32", vision_attention="per_image")
    assert is_vision_attention_batched(batched.model)
    assert not is_vision_attention_batched(stock.model)
    images = lesion_like_images(5)
    got = Embedder(batched, batch_size=5).embed(images, ["A", "tbp_lv_areaMM2"])
    want = Embedder(stock, batch_size=5).embed(images, ["A", "tbp_lv_areaMM2"])
    np.testing.assert_allclose(got.h_im, want.h_im, rtol=0, atol=1e-5)
    for name in want.h_im_a:
        np.testing.assert_allclose(got.h_im_a[name], want.h_im_a[name], rtol=0, atol=1e-5)


def test_the_loader_refuses_an_unknown_mode(tiny_model_dir) -> None:  # noqa: ANN001 - fixture
    with pytest.raises(ValueError, match="'batched' or 'per_image'"):
        load_backbone(tiny_model_dir, device="cpu", dtype="float32", vision_attention="windowed")  # type: ignore[arg-type]
