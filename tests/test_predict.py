"""Attribute prediction: greedy, sampled and multi-view answers from the shared prefix, parsed strictly, never a crash."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dermground.platform.attributes import ATTRIBUTE_NAMES, get_attribute
from dermground.platform.model.prompts import build_prompt
from dermground.platform.model.views import MAX_VIEWS, dihedral_view
from dermground.platform.predict import (
    SAMPLING_TOP_K,
    Prediction,
    answer_questions,
    predict_attributes,
    sample_answers,
    summarise_samples,
)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)) for _ in range(3)]


def test_every_answer_is_parsed_or_missing_with_raw_text(tiny_backbone, images):
    predictions = predict_attributes(tiny_backbone, images, max_new_tokens=8)
    assert len(predictions) == len(images)
    for per_image in predictions:
        assert list(per_image) == list(ATTRIBUTE_NAMES)
        for name, prediction in per_image.items():
            assert isinstance(prediction, Prediction) and isinstance(prediction.raw, str)
            assert prediction.ok == (prediction.value is not None)
            assert prediction.value == get_attribute(name).parse_value(prediction.raw)
    # A random model answers junk: it must come back as missing, with the text kept.
    missing = [p for per_image in predictions for p in per_image.values() if not p.ok]
    assert missing and any(p.raw for p in missing)


def test_answers_equal_hugging_face_greedy_generate(tiny_backbone, images):
    names = ["areaMM2", "B", "norm_border"]
    predictions = predict_attributes(tiny_backbone, images, attributes=names, max_new_tokens=6, batch_size=2,
                                     suffix_batch=4)
    for i, image in enumerate(images):
        for name in names:
            inputs = tiny_backbone.processor(text=[build_prompt(get_attribute(name).question)], images=[image],
                                             return_tensors="pt")
            output = tiny_backbone.model.generate(**inputs, max_new_tokens=6, do_sample=False)
            expected = tiny_backbone.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:],
                                                      skip_special_tokens=True).strip()
            assert predictions[i][name].raw == expected, (i, name)


def test_new_tokens_are_bounded(tiny_backbone, images):
    short = predict_attributes(tiny_backbone, images[:1], attributes=["A"], max_new_tokens=2)[0]["A"].raw
    inputs = tiny_backbone.processor(text=[build_prompt(get_attribute("A").question)], images=images[:1],
                                     return_tensors="pt")
    output = tiny_backbone.model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert len(output) > 2  # the model would say more than two tokens here
    assert short == tiny_backbone.tokenizer.decode(output[:2], skip_special_tokens=True).strip()
    with pytest.raises(ValueError):
        predict_attributes(tiny_backbone, images[:1], max_new_tokens=0)


def test_free_questions_answer_like_generate_in_image_then_question_order(tiny_backbone, images):
    questions = ["What is the mean brightness of the image?", get_attribute("A").question]
    answers = answer_questions(tiny_backbone, images[:2], questions, max_new_tokens=5, batch_size=1, suffix_batch=3)
    assert len(answers) == 2 and all(len(row) == 2 for row in answers)
    for i, image in enumerate(images[:2]):
        for j, question in enumerate(questions):
            inputs = tiny_backbone.processor(text=[build_prompt(question)], images=[image], return_tensors="pt")
            output = tiny_backbone.model.generate(**inputs, max_new_tokens=5, do_sample=False)
            assert answers[i][j] == tiny_backbone.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:],
                                                                   skip_special_tokens=True).strip(), (i, j)


# --- sampled-mean decoding -------------------------------------------------------------------------
def test_sampled_answers_do_not_depend_on_batching_or_the_other_questions(tiny_backbone, images):
    questions = [get_attribute(n).question for n in ("areaMM2", "B", "norm_border")]
    together = sample_answers(tiny_backbone, images, questions, 6, seed=3, max_new_tokens=4, batch_size=3,
                              suffix_batch=64)
    apart = sample_answers(tiny_backbone, images[2:], questions[1:2], 6, seed=3, max_new_tokens=4, batch_size=1,
                           suffix_batch=5)
    assert apart[0][0] == together[2][1]
    again = sample_answers(tiny_backbone, images, questions, 6, seed=3, max_new_tokens=4, batch_size=2)
    assert again == together
    other_seed = sample_answers(tiny_backbone, images, questions, 6, seed=4, max_new_tokens=4, batch_size=3)
    assert other_seed != together
    # samples differ from one another (it is sampling, not greedy repeated)
    assert any(len(set(per_question)) > 1 for row in together for per_question in row)


def test_sampling_follows_the_models_first_token_distribution(tiny_backbone, images):
    question = get_attribute("A").question
    inputs = tiny_backbone.processor(text=[build_prompt(question)], images=images[:1], return_tensors="pt")
    with torch.inference_mode():
        logits = tiny_backbone.model(**inputs).logits[0, -1].float()
    # sampling draws from the softmax renormalised over the SAMPLING_TOP_K most likely tokens
    values, candidates = logits.topk(SAMPLING_TOP_K)
    probs = torch.softmax(values, dim=-1)
    n = 256
    drawn = sample_answers(tiny_backbone, images[:1], [question], n, seed=0, max_new_tokens=1)[0][0]
    texts = [tiny_backbone.tokenizer.decode([int(t)], skip_special_tokens=True).strip() for t in candidates]
    assert set(drawn) <= set(texts)
    top = texts[0]
    p = float(probs[[i for i, t in enumerate(texts) if t == top]].sum())
    assert 0.05 < p < 0.95, p  # a random model: the check below is not trivially 0 or n
    hits = sum(text == top for text in drawn)
    assert abs(hits - n * p) <= 4 * (n * p * (1 - p)) ** 0.5, (hits, n * p)
    # a near-zero temperature is greedy
    cold = sample_answers(tiny_backbone, images[:1], [question], 4, temperature=1e-4, max_new_tokens=5)[0][0]
    greedy = answer_questions(tiny_backbone, images[:1], [question], max_new_tokens=5)[0][0]
    assert cold == [greedy] * 4


@pytest.mark.parametrize("pool", ["mean", "median"])
def test_sampled_prediction_is_the_pool_of_its_parsed_samples(tiny_backbone, images, pool):
    names = ["areaMM2", "deltaB"]
    predictions = predict_attributes(tiny_backbone, images[:2], attributes=names, max_new_tokens=6, samples=8, seed=1,
                                     pool=pool)
    drawn = sample_answers(tiny_backbone, images[:2], [get_attribute(n).question for n in names], 8, seed=1,
                           max_new_tokens=6)
    greedy = answer_questions(tiny_backbone, images[:2], [get_attribute(n).question for n in names], max_new_tokens=6)
    for i in range(2):
        for q, name in enumerate(names):
            assert predictions[i][name] == summarise_samples(get_attribute(name), greedy[i][q], drawn[i][q], pool)


def test_summarise_samples_mean_spread_and_the_majority_rule():
    area = get_attribute("areaMM2")
    p = summarise_samples(area, "12.0", ["10.0", "14.0", "junk", "12.0"])
    assert p.ok and p.value == pytest.approx(12.0) and p.samples == 3
    assert p.spread == pytest.approx((8 / 3) ** 0.5)
    assert p.raw == "12.0"  # the greedy text is kept for display
    few = summarise_samples(area, "12.0", ["10.0", "junk", "junk", "?"])
    assert not few.ok and few.value is None and few.samples == 1
    assert not summarise_samples(area, "", []).ok


def test_median_pool_ignores_a_slipped_decimal_point_and_unknown_pools_are_refused():
    minor = get_attribute("minorAxisMM")
    texts = ["2.30", "2.40", "23.40", "2.35", "2.50"]
    mean, median = (summarise_samples(minor, "2.30", texts, pool) for pool in ("mean", "median"))
    assert mean.value == pytest.approx(6.59) and median.value == pytest.approx(2.40)
    assert median.spread == mean.spread and median.samples == 5  # the spread describes the answers, not the pool
    assert not summarise_samples(minor, "", ["2.3", "junk", "?"], "median").ok  # the majority rule holds too
    with pytest.raises(ValueError, match="mean, median"):
        summarise_samples(minor, "2.30", texts, "mode")


def test_sampling_rejects_bad_settings(tiny_backbone, images):
    for kwargs in ({"samples": 0}, {"samples": 10_000}, {"samples": 2, "temperature": 0.0}):
        with pytest.raises(ValueError):
            sample_answers(tiny_backbone, images[:1], ["q"], **kwargs)

    with pytest.raises(ValueError, match="views"):
        sample_answers(tiny_backbone, images[:1], ["q"], 2, views=MAX_VIEWS + 1)
    with pytest.raises(ValueError, match="views"):
        predict_attributes(tiny_backbone, images[:1], ["A"], views=0)


# --- dihedral views ----------------------------------------------------------------------------------
def test_greedy_views_pool_the_greedy_answers_of_each_turned_image(tiny_backbone, images):
    names = ["areaMM2", "B"]
    questions = [get_attribute(n).question for n in names]
    pooled = predict_attributes(tiny_backbone, images[:2], attributes=names, max_new_tokens=5, views=4)
    per_view = [answer_questions(tiny_backbone, [dihedral_view(im, v) for im in images[:2]], questions,
                                 max_new_tokens=5) for v in range(4)]
    for i in range(2):
        for q, name in enumerate(names):
            texts = [per_view[v][i][q] for v in range(4)]
            assert pooled[i][name] == summarise_samples(get_attribute(name), texts[0], texts), (i, name)
    assert len({per_view[v][0][0] for v in range(4)} | {per_view[v][1][1] for v in range(4)}) > 1  # views differ


def test_sampled_views_extend_the_one_view_samples_and_do_not_depend_on_batching(tiny_backbone, images):
    questions = [get_attribute(n).question for n in ("deltaB", "stdLExt")]
    one_view = sample_answers(tiny_backbone, images, questions, 3, seed=5, max_new_tokens=4, batch_size=3)
    views = sample_answers(tiny_backbone, images, questions, 3, seed=5, max_new_tokens=4, batch_size=3, views=4)
    # batch_size counts (image, view) prefixes: 5 splits images' views across chunks
    split = sample_answers(tiny_backbone, images, questions, 3, seed=5, max_new_tokens=4, batch_size=5, views=4)
    assert views == split
    for i in range(len(images)):
        for q in range(len(questions)):
            assert len(views[i][q]) == 12
            assert views[i][q][:3] == one_view[i][q]  # view 0 is the image as given, with its old noise
    # each later view is the same question asked of the turned image, with its own noise
    assert any(views[i][q][3:] != views[i][q][:3] * 3 for i in range(len(images)) for q in range(2))
    predictions = predict_attributes(tiny_backbone, images[:1], ["deltaB"], max_new_tokens=4, samples=3, seed=5,
                                     views=4)[0]["deltaB"]
    greedy = answer_questions(tiny_backbone, images[:1], questions[:1], max_new_tokens=4)[0][0]
    assert predictions == summarise_samples(get_attribute("deltaB"), greedy, views[0][0])
