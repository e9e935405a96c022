"""Attribute prediction: the model's answer to each question, parsed strictly into a number.

Decoding continues from the shared image prefix (the image is encoded once for all questions),
with a bound on new tokens. Junk answers come back as missing with their raw text.

Two estimates of the number (the paper does not say how it decodes):
- greedy (`samples=0`): the most likely token at each step. For a number written digit by digit
  this is not the most likely *value*: an uncertain model commits to one leading digit and the
  answer jumps between images, which costs far more squared error than the uncertainty itself.
- sampled mean (`samples=K`): K answers sampled from the model's own distribution, parsed, and
  averaged: the model's expected value, the estimate with the least squared error when the model
  is calibrated. The spread of the K answers is reported as an uncertainty. Sampling uses noise
  keyed by (seed, question, sample, step), never by batch position, so an image gets the same
  answer whatever batch it is in and whichever other questions are asked with it.

Views (`views=V`): every attribute is a property of the lesion, not of how the crop is turned, so
it is the same in the eight turns and mirror images of the square crop (platform/model/views.py).
The model is not invariant: its answers differ between views, partly at
random. With V > 1 the image is asked in its first V dihedral views (1, 2, 4 and 8 are groups)
and the answers of all views are pooled: K samples per view, or each view's greedy answer when
K = 0. The raw text stays the greedy answer to the image as given.

Pool (`pool`): how the pooled answers become one number. "mean" is the expected value; "median"
ignores the few answers with a slipped decimal point ("23.40" for 2.34) that can drag a mean of
32 answers far off. Which one the product uses was chosen on training-split images
(docs/EVALUATION.md).
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from dermground.platform.attributes import Attribute
from dermground.platform.embed import selected_attributes
from dermground.platform.model.loading import Backbone
from dermground.platform.model.shared_prefix import encode_prefix, run_suffixes, step, tokenize_suffixes
from dermground.platform.model.views import MAX_VIEWS, dihedral_view
from dermground.platform.settings import MAX_PREDICT_SAMPLES
from dermground.platform.settings import PREDICT_POOLS as POOLS  # noqa: N811 - the module's own name for them

DEFAULT_MAX_NEW_TOKENS = 10  # the longest answer, "-40.00", is 6 digit/sign tokens + <|im_end|>
SAMPLING_TOP_K = 64  # tokens considered per sampling step: digits, sign, point and end all fit


@dataclass(frozen=True)
class Prediction:
    """One answer: the parsed value (None when unparseable or out of range), the raw text, ok flag.

    `raw` is always the greedy answer to the image as given. With sampling or several views,
    `value` is the mean or median (the pool) of the `samples` pooled answers that parsed (None
    when fewer than half did) and `spread` their standard deviation.
    """

    value: float | None
    raw: str
    ok: bool
    spread: float | None = None
    samples: int = 0


def predict_attributes(
    backbone: Backbone,
    images: Sequence[Image.Image],
    attributes: Sequence[str] | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 4,
    suffix_batch: int = 64,
    samples: int = 0,
    seed: int = 0,
    temperature: float = 1.0,
    views: int = 1,
    pool: str = "mean",
) -> list[dict[str, Prediction]]:
    """For each image, {attribute name: Prediction}; all 16 attributes when None.

    `samples=0, views=1` gives the greedy answer's value; otherwise the `pool` ("mean" or
    "median") of the answers pooled over `views` dihedral views, K = `samples` sampled answers per
    view or, with `samples=0`, each view's greedy answer (see the module docstring). The greedy
    answer to the image is kept as `raw`.
    """
    check_pool(pool)
    attrs = selected_attributes(attributes)
    answers, drawn = _generate(backbone, images, [a.question for a in attrs], greedy=True, samples=samples, seed=seed,
                               temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               suffix_batch=suffix_batch, views=views)
    pooled = samples or views > 1
    return [{a.name: summarise_samples(a, raw, drawn[i][q], pool) if pooled else greedy_prediction(a, raw)
             for q, (a, raw) in enumerate(zip(attrs, row))}
            for i, row in enumerate(answers)]


def greedy_prediction(attribute: Attribute, raw: str) -> Prediction:
    """The Prediction of a greedy answer text: its strictly parsed value, or missing."""
    value = attribute.parse_value(raw)
    return Prediction(value=value, raw=raw, ok=value is not None)


def check_pool(pool: str) -> str:
    """`pool` if it is one of POOLS, else ValueError naming the choices."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    return pool


def summarise_samples(attribute: Attribute, raw: str, texts: Sequence[str], pool: str = "mean") -> Prediction:
    """The Prediction from sampled answer texts: their `pool` (mean or median) and spread of those that parse.

    Most samples must parse (at least half): a value from the few numbers among junk would hide a
    confused model, so that counts as unparsed (value None) like a junk greedy answer. The spread
    is the answers' standard deviation whichever the pool.
    """
    check_pool(pool)
    values = [v for v in (attribute.parse_value(text) for text in texts) if v is not None]
    if not values or 2 * len(values) < len(texts):
        return Prediction(value=None, raw=raw, ok=False, spread=None, samples=len(values))
    mean = math.fsum(values) / len(values)
    spread = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
    value = mean if pool == "mean" else statistics.median(values)
    return Prediction(value=value, raw=raw, ok=True, spread=spread, samples=len(values))


def answer_questions(
    backbone: Backbone,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 4,
    suffix_batch: int = 64,
) -> list[list[str]]:
    """Greedy answer text of every image to every question, [image][question], unparsed."""
    answers, _ = _generate(backbone, images, questions, greedy=True, samples=0, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, suffix_batch=suffix_batch)
    return answers


def sample_answers(
    backbone: Backbone,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    samples: int,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 4,
    suffix_batch: int = 64,
    views: int = 1,
) -> list[list[list[str]]]:
    """Sampled answer texts of every image to every question, [image][question][view * samples + k].

    Tokens are drawn from the model's distribution (softmax of logits / temperature, restricted to
    the SAMPLING_TOP_K most likely tokens) by the Gumbel-max trick with noise that depends only on
    (seed, question text, view, sample, step): reproducible, and independent of batching. Each of
    the first `views` dihedral views gets `samples` answers, view 0 (the image as given) first.
    """
    if samples < 1:
        raise ValueError(f"samples must be between 1 and {MAX_PREDICT_SAMPLES}, got {samples}")
    _, drawn = _generate(backbone, images, questions, greedy=False, samples=samples, seed=seed, temperature=temperature,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, suffix_batch=suffix_batch, views=views)
    return drawn


def _generate(
    backbone: Backbone,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    greedy: bool,
    samples: int,
    seed: int = 0,
    temperature: float = 1.0,
    max_new_tokens: int,
    batch_size: int,
    suffix_batch: int,
    views: int = 1,
) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Greedy texts [image][question] of view 0 (if `greedy`) and the answers pooled over views.

    The pool is [image][question][view * samples + k]: `samples` sampled texts per view or, with
    `samples=0` and several views, each view's greedy text. Each chunk of (image, view) prefixes is
    encoded once and serves both the greedy and the sampled rows.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if not 0 <= samples <= MAX_PREDICT_SAMPLES:
        raise ValueError(f"samples must be between 0 (greedy only) and {MAX_PREDICT_SAMPLES}, got {samples}")
    if not 1 <= views <= MAX_VIEWS:
        raise ValueError(f"views must be between 1 (the image as given) and {MAX_VIEWS}, got {views}")
    if samples and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    suffixes = tokenize_suffixes(backbone, list(questions))
    stop_ids = _stop_token_ids(backbone)
    if samples:
        top_k = min(SAMPLING_TOP_K, backbone.core.lm_head.out_features)
        noise = torch.stack([torch.stack([_gumbel_noise(seed, q, samples, max_new_tokens, top_k, view=v)
                                          for q in questions]) for v in range(views)])  # [view, question, ...]
    greedy_pool = not samples and views > 1  # the pool is every view's greedy answer
    per_image = views * samples if samples else (views if greedy_pool else 0)
    answers: list[list[str]] = [[""] * len(questions) for _ in images] if greedy else []
    drawn: list[list[list[str]]] = [[[""] * per_image for _ in questions] for _ in images] if per_image else []
    # Virtual images: (image, view) pairs, view-minor, so a chunk holds whole images' views.
    virtual = [(i, v) for i in range(len(images)) for v in range(views)]

    def text(tokens: list[int]) -> str:
        return backbone.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    with torch.inference_mode():
        for start in range(0, len(virtual), batch_size):
            chunk = virtual[start : start + batch_size]
            state = encode_prefix(backbone, [dihedral_view(images[i], v) for i, v in chunk])
            pairs = [(j, q) for j in range(len(chunk)) for q in range(len(questions))]
            # Greedy rows: view 0 for `raw`, and every view when the pool is made of greedy answers.
            wanted = [(j, q) for j, q in pairs if (greedy and chunk[j][1] == 0) or greedy_pool]
            for rows in _parts(wanted, suffix_batch):
                generated = _greedy(backbone, state, rows, suffixes, stop_ids, max_new_tokens)
                for (j, q), tokens in zip(rows, generated):
                    i, v = chunk[j]
                    if greedy and v == 0:
                        answers[i][q] = text(tokens)
                    if greedy_pool:
                        drawn[i][q][v] = text(tokens)
            triples = [(j, q, k) for j, q in pairs for k in range(samples)]
            for rows in _parts(triples, suffix_batch):
                row_noise = noise[[chunk[j][1] for j, _, _ in rows], [q for _, q, _ in rows],
                                  [k for _, _, k in rows]].to(backbone.device)  # [r, steps, top_k]
                generated = _sampled(backbone, state, rows, suffixes, stop_ids, max_new_tokens, row_noise, temperature)
                for (j, q, k), tokens in zip(rows, generated):
                    i, v = chunk[j]
                    drawn[i][q][v * samples + k] = text(tokens)
    return answers, drawn


def _parts(rows: list, size: int) -> list[list]:
    return [rows[at : at + size] for at in range(0, len(rows), size)]


def _gumbel_noise(seed: int, question: str, samples: int, steps: int, top_k: int, view: int = 0) -> torch.Tensor:
    """Gumbel(0, 1) noise [samples, steps, top_k] for one question and view, keyed by the question text."""
    # View 0 keeps the key it had before views existed, so a one-view run is unchanged.
    name = f"{seed}\0{question}" if view == 0 else f"{seed}\0{question}\0view {view}"
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    uniform = torch.rand((samples, steps, top_k), generator=torch.Generator().manual_seed(key), dtype=torch.float64)
    return -torch.log(-torch.log(uniform.clamp(1e-12, 1.0 - 1e-12))).float()


def _sampled(backbone: Backbone, state, rows, suffixes, stop_ids: set[int], max_new_tokens: int,  # noqa: ANN001
             noise: torch.Tensor, temperature: float) -> list[list[int]]:
    """Sampled tokens per (image, question, sample) row, up to the first stop token; noise [r, steps, k]."""
    lm_head = backbone.core.lm_head

    def choose(hidden: torch.Tensor, step_index: int) -> torch.Tensor:
        logits, candidates = lm_head(hidden).float().topk(noise.shape[-1], dim=-1)  # sorted, most likely first
        choice = (logits / temperature + noise[:, step_index]).argmax(dim=-1, keepdim=True)
        return candidates.gather(1, choice).squeeze(1)

    return _decode(backbone, state, [i for i, _, _ in rows], [suffixes[q] for _, q, _ in rows], stop_ids,
                   max_new_tokens, choose)


def _greedy(backbone: Backbone, state, rows, suffixes, stop_ids: set[int], max_new_tokens: int) -> list[list[int]]:  # noqa: ANN001
    """Greedy tokens per (image, question index) row, up to (not including) the first stop token."""
    lm_head = backbone.core.lm_head
    return _decode(backbone, state, [i for i, _ in rows], [suffixes[q] for _, q in rows], stop_ids, max_new_tokens,
                   lambda hidden, _step: lm_head(hidden).argmax(dim=-1))


def _decode(backbone: Backbone, state, image_rows: list[int], row_suffixes: list[list[int]],  # noqa: ANN001
            stop_ids: set[int], max_new_tokens: int,
            choose: Callable[[torch.Tensor, int], torch.Tensor]) -> list[list[int]]:
    """Decode every row from its prefix + suffix; `choose(hidden, step)` picks each row's next token."""
    hidden, suffix_state = run_suffixes(backbone, state, image_rows, row_suffixes)
    tokens: list[list[int]] = [[] for _ in image_rows]
    done = [False] * len(image_rows)
    for step_index in range(max_new_tokens):
        next_tokens = choose(hidden, step_index)
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
