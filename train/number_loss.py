"""A regression-like loss on the digit tokens of the answers (Number Token Loss, Wasserstein form).

Cross-entropy treats every wrong digit alike: with the truth "4", predicting "3" costs as much as
"9". The answers here are numbers written digit by digit, so the model is read as a regressor
(platform/predict.py averages sampled answers) but trained as a classifier. NTL-WAS (Zausinger et
al., "Regress, Don't Guess", ICML 2025) adds, at every labelled position whose target is a digit,
the expected distance between the predicted digit and the true one,

    sum_d p(d) * |d - y|,   p = softmax of the logits over the ten digit tokens only,

i.e. the Wasserstein-1 distance between the predicted digit distribution and the one-hot truth:
zero only when all mass sits on the right digit, and growing with how far the mass is. It is
added to the cross-entropy with a weight (the authors recommend 0.3); the answers' other tokens
(point, sign, end of turn) keep the cross-entropy alone.
"""

from __future__ import annotations

import torch

from dermground.train.collator import IGNORE_INDEX

DIGITS = "0123456789"


def digit_token_ids(tokenizer) -> torch.Tensor:  # noqa: ANN001 - any Hugging Face tokenizer
    """The token ids of "0".."9", in digit order; an error when a digit is not one token of its own."""
    ids = []
    for digit in DIGITS:
        encoded = tokenizer.encode(digit, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"the tokenizer writes the digit {digit!r} as {len(encoded)} tokens; the number loss "
                             "needs one token per digit (Qwen2's tokenizer splits numbers into single digits)")
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise ValueError("the tokenizer maps two digits to the same token")
    return torch.tensor(ids, dtype=torch.long)


def number_token_loss(logits: torch.Tensor, labels: torch.Tensor, digit_ids: torch.Tensor) -> torch.Tensor:
    """Mean NTL-WAS over the labelled digit positions of a causal-LM batch (0 when there are none).

    `logits` (batch, seq, vocab) and `labels` (batch, seq) are aligned as the model's own loss takes
    them: the logits at position t predict the label at t + 1.
    """
    digit_ids = digit_ids.to(labels.device)
    targets = labels[:, 1:]
    is_digit = torch.isin(targets, digit_ids) & (targets != IGNORE_INDEX)
    if not bool(is_digit.any()):
        return logits.new_zeros(())
    digit_logits = logits[:, :-1][is_digit][:, digit_ids].float()  # (n, 10)
    probabilities = digit_logits.softmax(dim=-1)
    # position of each target among the digit ids = its digit value
    true_digit = (targets[is_digit].unsqueeze(1) == digit_ids.unsqueeze(0)).float().argmax(dim=1)
    values = torch.arange(len(digit_ids), device=logits.device, dtype=probabilities.dtype)
    distance = (values.unsqueeze(0) - true_digit.unsqueeze(1).to(probabilities.dtype)).abs()
    return (probabilities * distance).sum(dim=1).mean()
