"""Batches of (image, question, answer) -> model inputs whose loss covers only the answer.

Text = the chat prompt exactly as embedding and prediction use it, then the answer and
<|im_end|>. Labels are -100 everywhere except the answer tokens and the closing <|im_end|>, so
the model is trained to produce y_a (and to stop), never to reproduce the prompt or the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from dermground.platform.model.prompts import END_OF_TURN, build_training_text

IGNORE_INDEX = -100


class AnswerOnlyCollator:
    """Callable turning [(image, question, answer), ...] into a padded batch with masked labels."""

    def __init__(self, processor) -> None:  # noqa: ANN001 - an ImageOnlyQwen2VLProcessor
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if self.tokenizer.padding_side != "left":
            # Left padding keeps every answer at the end of its row, where the mask looks for it.
            raise ValueError("the collator needs a left-padding tokenizer (load_processor sets it)")

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of answer + <|im_end|> as they appear at the end of a training text."""
        return self.tokenizer(answer + END_OF_TURN, add_special_tokens=False)["input_ids"]

    def __call__(self, examples: Sequence[tuple[Image.Image, str, str]]) -> dict[str, torch.Tensor]:
        images = [im if im.mode == "RGB" else im.convert("RGB") for im, _, _ in examples]
        texts = [build_training_text(question, answer) for _, question, answer in examples]
        batch = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        input_ids = batch["input_ids"]
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, (_, _, answer) in enumerate(examples):
            ids = self.answer_ids(answer)
            tail = input_ids[row, -len(ids):].tolist()
            if tail != ids:
                # The prompt/answer boundary tokenised differently from the answer alone: refuse
                # rather than train on a shifted mask.
                raise ValueError(f"answer {answer!r} does not tokenise the same inside the prompt "
                                 f"({tail} vs {ids}); check the tokenizer's pre-tokenizer")
            labels[row, -len(ids):] = input_ids[row, -len(ids):]
        batch["labels"] = labels
        if "mm_token_type_ids" in batch:
            # Answer tokens are text (type 0); the processor already sets this, asserted for safety.
            assert not batch["mm_token_type_ids"][labels != IGNORE_INDEX].any()
        return dict(batch)
