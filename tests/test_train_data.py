"""D_tr sampling, the answer-only collator on real tokens, LoRA targets, pre-training statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dermground.platform.attributes import ATTRIBUTE_NAMES, get_attribute
from dermground.platform.model.prompts import (
    END_OF_TURN,
    format_multi_answer,
    multi_attribute_question,
    parse_multi_answer,
)
from dermground.train.collator import IGNORE_INDEX, AnswerOnlyCollator
from dermground.train.dataset import data_fingerprint, sample_attributes, tuples_for_image


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    from dermground.ingest.synth import generate_dataset

    out = tmp_path_factory.mktemp("train_data") / "data"
    generate_dataset(out, patients=6, images=20, seed=5, size=64, progress=False, workers=1)
    return out


def _values(offset: float = 0.0) -> dict[str, float]:
    return {name: 1.5 + i + offset for i, name in enumerate(ATTRIBUTE_NAMES)}


def test_sampling_is_distinct_seeded_and_order_free():
    draws = {isic: sample_attributes(isic, 5, seed=0) for isic in ("ISIC_1", "ISIC_2", "ISIC_3")}
    for names in draws.values():
        assert len(names) == 5 and len(set(names)) == 5
        assert set(names) <= set(ATTRIBUTE_NAMES)
    assert sample_attributes("ISIC_2", 5, seed=0) == draws["ISIC_2"]  # same seed, same draw
    assert any(sample_attributes(i, 5, seed=1) != d for i, d in draws.items())  # another seed, other draws
    with pytest.raises(ValueError, match="W must be"):
        sample_attributes("ISIC_1", 17, seed=0)


def test_sampling_is_roughly_uniform():
    counts = dict.fromkeys(ATTRIBUTE_NAMES, 0)
    for i in range(800):
        for name in sample_attributes(f"ISIC_{i}", 5, seed=0):
            counts[name] += 1
    expected = 800 * 5 / 16
    assert all(abs(c - expected) < 0.25 * expected for c in counts.values()), counts


def test_tuples_carry_question_and_formatted_answer():
    tuples = tuples_for_image("ISIC_9", "ref", _values(), w=3, seed=0)
    assert len(tuples) == 3
    for t in tuples:
        (name,) = t.attributes
        attribute = get_attribute(name)
        assert t.question == attribute.question
        assert t.answer == attribute.format_value(_values()[name])


def test_training_set_size_and_fingerprint(synth_data):
    from dermground.platform.records import LesionRecord, read_records
    from dermground.train.dataset import build_training_set

    n_train = sum(isinstance(r, LesionRecord) for r in read_records(synth_data, split="train"))
    assert n_train > 0
    full = build_training_set(synth_data, w=5, seed=0)
    assert len(full) == n_train * 5 and full.n_images == n_train
    assert {t.isic_id for t in full.tuples} == {r.isic_id for r in read_records(synth_data, split="train")}
    assert build_training_set(synth_data, w=5, seed=0).fingerprint == full.fingerprint
    assert build_training_set(synth_data, w=5, seed=1).fingerprint != full.fingerprint
    multi = build_training_set(synth_data, w=5, seed=0, multi_attribute=True)
    assert len(multi) == n_train * 6
    assert all(2 <= len(t.attributes) <= 3 for t in multi.tuples if len(t.attributes) > 1)
    assert data_fingerprint(multi.tuples) == multi.fingerprint != full.fingerprint


def test_multi_attribute_answer_round_trip():
    names = ["areaMM2", "norm_border", "deltaB"]
    question = multi_attribute_question(names)
    assert get_attribute("areaMM2").question in question and "areaMM2=value; norm_border=value" in question
    answer = format_multi_answer({"areaMM2": 12.34, "norm_border": 4.561, "deltaB": -3.0})
    assert answer == "areaMM2=12.3; norm_border=4.56; deltaB=-3.00"
    assert parse_multi_answer(answer, names) == {"areaMM2": 12.3, "norm_border": 4.56, "deltaB": -3.0}
    assert parse_multi_answer("areaMM2=junk; deltaB=1.5", names) == {"areaMM2": None, "norm_border": None, "deltaB": 1.5}


def test_collator_labels_only_the_answer_and_end_token(tiny_backbone):
    collate = AnswerOnlyCollator(tiny_backbone.processor)
    image = Image.new("RGB", (112, 112), (180, 120, 100))
    examples = [(image, get_attribute("areaMM2").question, "123.4"),
                (image, get_attribute("deltaB").question, "-7.25")]  # different lengths: padding in play
    batch = collate(examples)
    tokenizer = tiny_backbone.tokenizer
    for row, (_, _, answer) in enumerate(examples):
        labelled = batch["labels"][row] != IGNORE_INDEX
        assert tokenizer.decode(batch["input_ids"][row][labelled]) == answer + END_OF_TURN
        assert (batch["labels"][row][labelled] == batch["input_ids"][row][labelled]).all()
        assert not batch["mm_token_type_ids"][row][labelled].any()  # answer tokens are text
        assert batch["attention_mask"][row][labelled].all()
    # the loss runs and is finite on the real model
    loss = tiny_backbone.core(**batch).loss
    assert np.isfinite(float(loss))


def test_collator_batch_is_exactly_the_processors_batch(tiny_backbone):
    # encode-then-pad (what the training loop caches) must give what the processor gives for the
    # whole batch at once, padding included
    from dermground.platform.model.prompts import build_training_text

    collate = AnswerOnlyCollator(tiny_backbone.processor)
    images = [Image.new("RGB", (112, 112), (180, 120, 100)), Image.new("RGB", (96, 96), (20, 60, 200))]
    examples = [(images[0], get_attribute("areaMM2").question, "123.4"),
                (images[1], get_attribute("norm_border").question, "-7.25"),
                (images[0], get_attribute("A").question, "1.5")]
    batch = collate(examples)
    reference = tiny_backbone.processor(text=[build_training_text(q, a) for _, q, a in examples],
                                        images=[im for im, _, _ in examples], padding=True, return_tensors="pt")
    assert set(reference) <= set(batch)
    for name in reference:
        assert torch.equal(batch[name], reference[name]), name
    assert (batch["attention_mask"] == 0).any()  # rows of different lengths: padding was exercised


def test_encoding_with_known_patches_equals_the_processor_path(tiny_backbone):
    # the W questions of one image reuse its patches and only tokenise: the rows must not differ
    collate = AnswerOnlyCollator(tiny_backbone.processor)
    image = Image.new("RGB", (128, 128), (170, 110, 90))
    first = collate.encode(image, get_attribute("areaMM2").question, "12.3")
    for name, answer in (("deltaB", "-7.25"), ("norm_border", "4.56")):
        slow = collate.encode(image, get_attribute(name).question, answer)
        fast = collate.encode_text(get_attribute(name).question, answer, first.pixel_values, first.image_grid_thw)
        assert fast.tokens.keys() == slow.tokens.keys()
        for key in slow.tokens:
            assert fast.tokens[key].dtype == slow.tokens[key].dtype and torch.equal(fast.tokens[key], slow.tokens[key]), key
        assert torch.equal(fast.labels, slow.labels) and fast.pixel_values is first.pixel_values


def test_answer_window_keeps_the_loss_and_drops_the_prompt_logits(tiny_backbone):
    from dermground.train.collator import answer_window

    collate = AnswerOnlyCollator(tiny_backbone.processor)
    image = Image.new("RGB", (112, 112), (150, 90, 60))
    batch = collate([(image, get_attribute("areaMM2").question, "12.3"),
                     (image, get_attribute("deltaB").question, "-17.25")])
    windowed = answer_window(batch)
    longest = int((batch["labels"] != IGNORE_INDEX).sum(dim=1).max())
    assert windowed["logits_to_keep"] == longest + 1
    assert windowed["labels"].shape[1] == longest + 1 < batch["labels"].shape[1]
    with torch.no_grad():
        full = tiny_backbone.core(**batch)
        kept = tiny_backbone.core(**windowed)
    assert kept.logits.shape[1] == longest + 1
    assert float(kept.loss) == pytest.approx(float(full.loss), rel=1e-5)
    with pytest.raises(ValueError, match="no labelled tokens"):
        answer_window({**batch, "labels": torch.full_like(batch["labels"], IGNORE_INDEX)})


def test_example_cache_shares_patches_and_keeps_to_its_budget(tiny_backbone, synth_data):
    from dermground.train.dataset import build_training_set
    from dermground.train.loop import ExampleCache

    collate = AnswerOnlyCollator(tiny_backbone.processor)
    tuples = list(build_training_set(synth_data, w=5, seed=0).tuples)
    same_image = [i for i, t in enumerate(tuples) if t.image_ref == tuples[0].image_ref]
    assert len(same_image) == 5
    cache = ExampleCache(collate, budget_bytes=2**30)
    first, second = (cache.get(i, tuples[i]) for i in same_image[:2])
    assert first.pixel_values is second.pixel_values  # one copy of the image's patches
    reference = collate.encode(*_tuple_inputs(tuples[same_image[1]]))
    assert torch.equal(second.tokens["input_ids"], reference.tokens["input_ids"])  # the tokenise-only path
    assert cache.get(same_image[0], tuples[same_image[0]]) is first  # a hit, not a re-encode
    one_example = first.nbytes
    small = ExampleCache(collate, budget_bytes=one_example)
    kept = small.get(0, tuples[0])
    later = small.get(5, tuples[5])  # another image: over the budget, encoded but not kept
    assert small.used_bytes <= one_example
    assert small.get(5, tuples[5]) is not later and small.get(0, tuples[0]) is kept
    assert torch.equal(small.get(5, tuples[5]).labels, later.labels)
    # the CLI's --cache-mb default is the loop's (the CLI keeps torch out of `--help`, so it repeats it)
    from dermground.platform.commands.train import train
    from dermground.train.loop import DEFAULT_CACHE_MB

    assert next(p for p in train.params if p.name == "cache_mb").default == DEFAULT_CACHE_MB


def test_lora_trains_vision_and_decoder(tiny_model_dir):
    from transformers import Qwen2VLForConditionalGeneration

    from dermground.train.lora import apply_lora, trainable_parameter_names

    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, local_files_only=True)
    peft_model = apply_lora(model, rank=8, alpha=16, dropout=0.05)
    names = trainable_parameter_names(peft_model)
    assert names and all("lora_" in n for n in names)
    vision = [n for n in names if ".visual.blocks." in n]
    decoder = [n for n in names if ".language_model.layers." in n]
    assert {"qkv", "proj", "fc1", "fc2"} <= {n.split(".lora_")[0].rsplit(".", 1)[1] for n in vision}
    assert {"q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"} <= {n.split(".lora_")[0].rsplit(".", 1)[1] for n in decoder}
    assert not any("patch_embed" in n for n in names)  # the Conv3d stays frozen
    with_head = trainable_parameter_names(apply_lora(
        Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, local_files_only=True), modules_to_save=["lm_head"]))
    assert any("lm_head" in n for n in with_head)


def test_image_statistics_follow_the_pixels():
    from dermground.train.pretrain import STATISTICS, image_statistics

    flat = np.full((64, 64, 3), 200, dtype=np.uint8)
    stats = image_statistics(flat)
    assert stats["brightness_spread"] == pytest.approx(0.0) and stats["centre_darkness"] == pytest.approx(0.0)
    assert stats["mean_red"] == pytest.approx(200.0) and stats["dark_percentage"] == 0.0
    spot = flat.copy()
    yy, xx = np.mgrid[0:64, 0:64]
    spot[np.hypot(yy - 31.5, xx - 31.5) < 10] = (60, 30, 20)
    dark = image_statistics(spot)
    assert dark["centre_darkness"] > 20 and 5 < dark["dark_percentage"] < 10
    assert dark["mean_brightness"] < stats["mean_brightness"]
    # none of the pre-training questions is one of the 16 attribute questions
    assert not {s.question for s in STATISTICS} & {get_attribute(n).question for n in ATTRIBUTE_NAMES}


def test_r2_chart_marks_cut_bars(tmp_path):
    from dermground.eval.predictions import AttributeScore, plot_r2

    def red_pixels(r2_values: list[float]) -> int:
        scores = {name: AttributeScore(r2=v, parse_rate=1.0, n=10) for name, v in zip(ATTRIBUTE_NAMES, r2_values)}
        path = plot_r2(scores, tmp_path / f"chart{len(list(tmp_path.iterdir()))}.png", "test")
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int((np.abs(pixels - (0xC4, 0x4E, 0x52)).sum(axis=2) < 30).sum())

    assert red_pixels([0.5] * 16) == 0
    assert red_pixels([0.5] * 15 + [-0.98]) > 50  # the cut bar (and its legend patch) are drawn red


def _tuple_inputs(item):
    from dermground.platform.image_sources import load_image_bytes
    from dermground.platform.images import decode_image

    return decode_image(load_image_bytes(item.image_ref)), item.question, item.answer
