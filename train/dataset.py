"""D_tr (paper §3.2, eq. 1): each training-split image paired with W attributes, one tuple each.

The W attributes of an image are drawn uniformly without replacement from a generator seeded by
(seed, isic_id), so an image's draw does not depend on the order or number of the other images.
With `multi_attribute=True` every image also gets one tuple asking about 2-3 attributes at once,
answered in the fixed `name=value; name=value` format (paper's future work).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from dermground.platform.attributes import ATTRIBUTE_NAMES, get_attribute
from dermground.platform.model.prompts import PROMPT_VERSION, format_multi_answer, multi_attribute_question

DEFAULT_W = 5


@dataclass(frozen=True)
class TrainingTuple:
    """(I, Q(a), y_a): an image reference, the attribute(s) asked, the question and the answer text."""

    isic_id: str
    image_ref: str
    attributes: tuple[str, ...]  # one name, or 2-3 for a multi-attribute question
    question: str
    answer: str


@dataclass(frozen=True)
class TrainingSet:
    """The tuples of D_tr, a fingerprint of exactly what they contain, and the records left out."""

    tuples: tuple[TrainingTuple, ...]
    fingerprint: str
    n_images: int
    w: int
    seed: int
    multi_attribute: bool
    left_out: tuple = ()  # LeftOut (train/training_images.py): refused records, with field and reason

    def __len__(self) -> int:
        return len(self.tuples)


def sample_attributes(isic_id: str, w: int, seed: int) -> list[str]:
    """W distinct attribute names for one image, uniform without replacement, seeded by (seed, isic_id)."""
    if not 1 <= w <= len(ATTRIBUTE_NAMES):
        raise ValueError(f"W must be between 1 and {len(ATTRIBUTE_NAMES)}, got {w}")
    return random.Random(f"{seed}:{isic_id}").sample(ATTRIBUTE_NAMES, w)


def tuples_for_image(isic_id: str, image_ref: str, values: dict[str, float], w: int, seed: int,
                     multi_attribute: bool = False) -> list[TrainingTuple]:
    """The W single-attribute tuples of one image (+ one multi-attribute tuple when asked)."""
    out = []
    for name in sample_attributes(isic_id, w, seed):
        attribute = get_attribute(name)
        out.append(TrainingTuple(isic_id, image_ref, (name,), attribute.question, attribute.format_value(values[name])))
    if multi_attribute:
        rng = random.Random(f"{seed}:{isic_id}:multi")
        names = rng.sample(ATTRIBUTE_NAMES, rng.choice((2, 3)))
        out.append(TrainingTuple(isic_id, image_ref, tuple(names), multi_attribute_question(names),
                                 format_multi_answer({n: values[n] for n in names})))
    return out


def data_fingerprint(tuples: Iterable[TrainingTuple]) -> str:
    """sha256 (16 hex chars) of the tuple list (ids, questions, answers) and the prompt version."""
    digest = hashlib.sha256(PROMPT_VERSION.encode())
    for t in tuples:
        digest.update(json.dumps([t.isic_id, list(t.attributes), t.question, t.answer]).encode() + b"\n")
    return digest.hexdigest()[:16]


def build_training_set(data_dir: str | Path, w: int = DEFAULT_W, seed: int = 0, multi_attribute: bool = False,
                       max_images: int | None = None, *, model_dir: str | Path | None = None,
                       progress: bool = False) -> TrainingSet:
    """D_tr from the training split of an ISIC-format folder.

    Each image is checked once here (the image gate, and `model_dir`'s patch recipe when given:
    train/training_images.py); a record refused there or by the reader is left out with a warning
    naming it, the field and the reason, and listed in `left_out`. ValueError when none is usable.
    """
    from dermground.train.training_images import TrainingImages

    images = TrainingImages(data_dir, model_dir, max_images=max_images, command="train", progress=progress)
    tuples: list[TrainingTuple] = []
    n_images = 0
    for record, _ in images:  # the image is decoded to check it; the workers decode it again when they use it
        tuples += tuples_for_image(record.isic_id, record.image_ref, record.attributes, w, seed, multi_attribute)
        n_images += 1
    if not tuples:
        raise images.nothing_usable()
    return TrainingSet(tuple(tuples), data_fingerprint(tuples), n_images, w, seed, multi_attribute,
                       tuple(images.left_out))


def tuples_to_rows(tuples: Iterable[TrainingTuple]) -> list[dict]:
    """Plain dicts (to ship to Ray workers)."""
    return [asdict(t) for t in tuples]


def rows_to_tuples(rows: Iterable[dict]) -> list[TrainingTuple]:
    return [TrainingTuple(r["isic_id"], r["image_ref"], tuple(r["attributes"]), r["question"], r["answer"]) for r in rows]
