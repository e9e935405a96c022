"""Batches of (image, question, answer) -> model inputs whose loss covers only the answer.

Text = the chat prompt exactly as embedding and prediction use it, then the answer and
<|im_end|>. Labels are -100 everywhere except the answer tokens and the closing <|im_end|>, so
the model is trained to produce y_a (and to stop), never to reproduce the prompt or the image.

A batch is built in two steps so the training loop can cache the expensive one: `encode` runs
the processor on one example (image resize/normalise/patchify and tokenisation, ~1 ms each on
the tiny model) and `pad` left-pads already encoded rows into a batch. `collate(examples)` is
`pad([encode(...) ...])` and gives exactly what the processor gives for the whole batch at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from PIL import Image

from dermground.platform.model.prompts import END_OF_TURN, build_training_text
from dermground.platform.model.views import turn_patches

IGNORE_INDEX = -100
_TOKEN_FIELDS = ("input_ids", "attention_mask", "mm_token_type_ids")


@dataclass(frozen=True)
class EncodedExample:
    """One training example after the processor: unpadded token rows, labels and its image's patches."""

    tokens: dict[str, torch.Tensor]  # 1-D rows: input_ids, attention_mask (all 1), mm_token_type_ids
    labels: torch.Tensor  # 1-D, IGNORE_INDEX except the answer and end tokens
    pixel_values: torch.Tensor  # (patches, channels * temporal * patch * patch)
    image_grid_thw: torch.Tensor  # (3,)

    def in_view(self, view: int, merge_size: int = 2, temporal_patch_size: int = 2) -> EncodedExample:
        """This example with its image in dihedral view `view` (platform/model/views.py); itself for view 0."""
        if not view:
            return self
        pixels, grid = turn_patches(self.pixel_values, self.image_grid_thw, view, merge_size=merge_size,
                                    temporal_patch_size=temporal_patch_size)
        return replace(self, pixel_values=pixels, image_grid_thw=grid)

    @property
    def nbytes(self) -> int:
        """Memory this example holds (for cache budgets)."""
        tensors = [*self.tokens.values(), self.labels, self.pixel_values, self.image_grid_thw]
        return sum(t.element_size() * t.nelement() for t in tensors)


class AnswerOnlyCollator:
    """Callable turning [(image, question, answer), ...] into a padded batch with masked labels."""

    def __init__(self, processor) -> None:  # noqa: ANN001 - an ImageOnlyQwen2VLProcessor
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if self.tokenizer.padding_side != "left":
            # Left padding keeps every answer at the end of its row, where the mask and the
            # answer window look for it.
            raise ValueError("the collator needs a left-padding tokenizer (load_processor sets it)")
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the collator needs a tokenizer with a pad token (load_processor sets it)")

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of answer + <|im_end|> as they appear at the end of a training text."""
        return self.tokenizer(answer + END_OF_TURN, add_special_tokens=False)["input_ids"]

    def encode(self, image: Image.Image, question: str, answer: str) -> EncodedExample:
        """Run the processor on one example and mask its labels (the cacheable half of a batch)."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        out = self.processor(text=[build_training_text(question, answer)], images=[image], return_tensors="pt")
        tokens = {name: out[name][0] for name in _TOKEN_FIELDS if name in out}
        return self._with_labels(tokens, answer, out["pixel_values"], out["image_grid_thw"][0])

    def encode_text(self, question: str, answer: str, pixel_values: torch.Tensor,
                    image_grid_thw: torch.Tensor) -> EncodedExample:
        """`encode` for an image whose patches are already known: tokenisation only, no image work.

        The W questions of one image share its patches; redoing the processor for each cost ~1.6 ms
        an example in the first epoch. The result equals `encode`'s (tested): the image token is
        expanded to the grid's merged-patch count, as the processor does, and typed 1.
        """
        merge = getattr(self.processor.image_processor, "merge_size", 2)
        count = int(image_grid_thw.prod()) // merge**2
        token = self.processor.image_token
        text = build_training_text(question, answer).replace(token, token * count)
        input_ids = self.tokenizer(text, return_tensors="pt")["input_ids"][0]
        tokens = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if "mm_token_type_ids" in self.processor.model_input_names:
            tokens["mm_token_type_ids"] = (input_ids == self.processor.image_token_id).to(input_ids.dtype)
        return self._with_labels(tokens, answer, pixel_values, image_grid_thw)

    def _with_labels(self, tokens: dict[str, torch.Tensor], answer: str, pixel_values: torch.Tensor,
                     image_grid_thw: torch.Tensor) -> EncodedExample:
        input_ids, answer_ids = tokens["input_ids"], self.answer_ids(answer)
        if input_ids[-len(answer_ids):].tolist() != answer_ids:
            # The prompt/answer boundary tokenised differently from the answer alone: refuse
            # rather than train on a shifted mask.
            raise ValueError(f"answer {answer!r} does not tokenise the same inside the prompt "
                             f"({input_ids[-len(answer_ids):].tolist()} vs {answer_ids}); "
                             "check the tokenizer's pre-tokenizer")
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        labels[-len(answer_ids):] = input_ids[-len(answer_ids):]
        if "mm_token_type_ids" in tokens:
            # Answer tokens are text (type 0); the processor already sets this, asserted for safety.
            assert not tokens["mm_token_type_ids"][labels != IGNORE_INDEX].any()
        return EncodedExample(tokens=tokens, labels=labels, pixel_values=pixel_values, image_grid_thw=image_grid_thw)

    def pad(self, rows: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        """Left-pad encoded rows into one batch (pad id, attention 0, token type 0, label -100)."""
        if not rows:
            raise ValueError("cannot build a batch from no examples")
        width = max(len(r.labels) for r in rows)
        fill = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0, "mm_token_type_ids": 0}
        batch: dict[str, torch.Tensor] = {}
        for name in rows[0].tokens:
            batch[name] = torch.stack([_left_pad(r.tokens[name], width, fill[name]) for r in rows])
        batch["pixel_values"] = torch.cat([r.pixel_values for r in rows])
        batch["image_grid_thw"] = torch.stack([r.image_grid_thw for r in rows])
        batch["labels"] = torch.stack([_left_pad(r.labels, width, IGNORE_INDEX) for r in rows])
        return batch

    def __call__(self, examples: Sequence[tuple[Image.Image, str, str]]) -> dict[str, torch.Tensor]:
        return self.pad([self.encode(image, question, answer) for image, question, answer in examples])


def answer_window(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with logits kept only where the loss needs them: the answers at the rows' ends.

    With left padding every labelled token sits in the last n positions; the logits that predict
    them are the n positions before, so keeping the last n + 1 (`logits_to_keep`) and passing the
    labels of those positions gives the same loss as the full sequence (the model's loss shifts
    labels by one inside the window) without the vocabulary projection and log-softmax over the
    whole prompt: 1-3% of a tiny-model step (1,024-token vocabulary), more with a real 151k one.
    """
    labels = batch["labels"]
    labelled = labels != IGNORE_INDEX
    if not labelled.any():
        raise ValueError("the batch has no labelled tokens")
    first = int(labelled.float().argmax(dim=1)[labelled.any(dim=1)].min())  # earliest labelled column
    keep = labels.shape[1] - first + 1
    if keep >= labels.shape[1]:
        return batch
    return {**batch, "labels": labels[:, -keep:], "logits_to_keep": keep}


def _left_pad(row: torch.Tensor, width: int, value: int) -> torch.Tensor:
    if len(row) == width:
        return row
    return torch.cat([row.new_full((width - len(row),), value), row])
