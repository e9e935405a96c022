"""Attribute prediction: the model's answer to each question, parsed strictly into a number.

Greedy decoding continues from the shared image prefix (the image is encoded once for all
questions), with a bound on new tokens. Junk answers come back as missing with their raw text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from dermground.platform.embed import selected_attributes
from dermground.platform.model.loading import Backbone
from dermground.platform.model.shared_prefix import encode_prefix, run_suffixes, step, tokenize_suffixes

DEFAULT_MAX_NEW_TOKENS = 10  # the longest answer, "-40.00", is 6 digit/sign tokens + <|im_end|>


@dataclass(frozen=True)
class Prediction:
    """One answer: the parsed value (None when unparseable or out of range), the raw text, ok flag."""

    value: float | None
    raw: str
    ok: bool


def predict_attributes(
    backbone: Backbone,
    images: Sequence[Image.Image],
    attributes: Sequence[str] | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 4,
    suffix_batch: int = 64,
) -> list[dict[str, Prediction]]:
    """For each image, {attribute name: Prediction}; all 16 attributes when None."""
    attrs = selected_attributes(attributes)
    answers = answer_questions(backbone, images, [a.question for a in attrs], max_new_tokens, batch_size, suffix_batch)
    results: list[dict[str, Prediction]] = []
    for row in answers:
        parsed = {}
        for a, raw in zip(attrs, row):
            value = a.parse_value(raw)
            parsed[a.name] = Prediction(value=value, raw=raw, ok=value is not None)
        results.append(parsed)
    return results


def answer_questions(
    backbone: Backbone,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 4,
    suffix_batch: int = 64,
) -> list[list[str]]:
    """Greedy answer text of every image to every question, [image][question], unparsed."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    suffixes = tokenize_suffixes(backbone, list(questions))
    stop_ids = _stop_token_ids(backbone)
    results: list[list[str]] = [[""] * len(questions) for _ in images]
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            state = encode_prefix(backbone, chunk)
            pairs = [(i, q) for i in range(len(chunk)) for q in range(len(questions))]
            for row_start in range(0, len(pairs), suffix_batch):
                rows = pairs[row_start : row_start + suffix_batch]
                generated = _greedy(backbone, state, rows, suffixes, stop_ids, max_new_tokens)
                for (i, q), tokens in zip(rows, generated):
                    results[start + i][q] = backbone.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return results


def _greedy(backbone: Backbone, state, rows, suffixes, stop_ids: set[int], max_new_tokens: int) -> list[list[int]]:  # noqa: ANN001
    """Greedy tokens per (image, question index) row, up to (not including) the first stop token."""
    lm_head = backbone.core.lm_head
    hidden, suffix_state = run_suffixes(backbone, state, [i for i, _ in rows], [suffixes[q] for _, q in rows])
    tokens: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    for step_index in range(max_new_tokens):
        next_tokens = lm_head(hidden).argmax(dim=-1)
        for r, token in enumerate(next_tokens.tolist()):
            if done[r]:
                continue
            if token in stop_ids:
                done[r] = True
            else:
                tokens[r].append(token)
        if all(done) or step_index == max_new_tokens - 1:
            break
        hidden = step(backbone, suffix_state, next_tokens)
    return tokens


def _stop_token_ids(backbone: Backbone) -> set[int]:
    tokenizer = backbone.tokenizer
    ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    eos = backbone.core.generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return {i for i in ids if isinstance(i, int) and i >= 0}
