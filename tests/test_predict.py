"""Attribute prediction: greedy answers from the shared prefix, parsed strictly, never a crash."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dermground.platform.attributes import ATTRIBUTE_NAMES, get_attribute
from dermground.platform.model.prompts import build_prompt
from dermground.platform.predict import Prediction, answer_questions, predict_attributes


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
