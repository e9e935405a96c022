"""The number token loss (NTL-WAS) on the answers' digits: its values, its mask, and a Ray run with it."""

from __future__ import annotations

import json

import pytest
import torch

from dermground.train.collator import IGNORE_INDEX
from dermground.train.number_loss import digit_token_ids, number_token_loss


def _logits_for(labels: torch.Tensor, vocab: int, mass: dict[int, float]) -> torch.Tensor:
    """Logits whose digit distribution at every position is `mass` (token id -> probability)."""
    logits = torch.full((*labels.shape, vocab), -30.0)
    for token, p in mass.items():
        logits[..., token] = torch.log(torch.tensor(p))
    return logits


def test_digits_are_single_tokens_of_the_tiny_tokenizer(tiny_backbone):
    ids = digit_token_ids(tiny_backbone.tokenizer)
    assert ids.shape == (10,)
    assert tiny_backbone.tokenizer.convert_ids_to_tokens(ids.tolist()) == list("0123456789")


def test_loss_is_the_expected_distance_to_the_true_digit(tiny_backbone):
    tokenizer = tiny_backbone.tokenizer
    ids = digit_token_ids(tokenizer)
    vocab = len(tokenizer)
    answer = tokenizer.encode("4.7", add_special_tokens=False)  # "4", ".", "7"
    # position 0 is the prompt's last token: its logits predict the first answer token
    labels = torch.tensor([[IGNORE_INDEX, *answer]])
    all_on_four = _logits_for(labels, vocab, {int(ids[4]): 1.0})
    # truths 4 and 7, all mass on "4": distances 0 and 3; the "." position is not a digit and adds nothing
    assert float(number_token_loss(all_on_four, labels, ids)) == pytest.approx((0 + 3) / 2, abs=1e-4)
    split = _logits_for(labels, vocab, {int(ids[3]): 0.5, int(ids[5]): 0.5})
    # mean 4 = truth 4 but mass one digit away either side: Wasserstein 1 (MSE of the mean would say 0)
    assert float(number_token_loss(split, labels, ids)) == pytest.approx((1 + 0.5 * 4 + 0.5 * 2) / 2, abs=1e-4)


def test_unlabelled_and_non_digit_positions_are_ignored(tiny_backbone):
    ids = digit_token_ids(tiny_backbone.tokenizer)
    vocab = len(tiny_backbone.tokenizer)
    dot = tiny_backbone.tokenizer.encode(".", add_special_tokens=False)[0]
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, dot]])
    logits = torch.randn(1, 3, vocab, requires_grad=True)
    loss = number_token_loss(logits, labels, ids)
    assert float(loss) == 0.0


def test_gradient_moves_mass_towards_the_true_digit(tiny_backbone):
    ids = digit_token_ids(tiny_backbone.tokenizer)
    vocab = len(tiny_backbone.tokenizer)
    labels = torch.tensor([[IGNORE_INDEX, int(ids[2])]])
    logits = torch.zeros(1, 2, vocab, requires_grad=True)
    number_token_loss(logits, labels, ids).backward()
    grad = logits.grad[0, 0, ids]
    assert grad[2] < 0 < grad[9]  # descent raises "2" and lowers the far digits most
    assert grad[9] > grad[5] > grad[3]


def test_a_tokenizer_that_merges_digits_is_refused():
    class Merging:
        def encode(self, text, add_special_tokens=False):  # noqa: ANN001, ANN202, ARG002
            return [1, 2] if text == "7" else [ord(text)]

    with pytest.raises(ValueError, match="'7'"):
        digit_token_ids(Merging())


def test_training_with_the_number_loss(ray_session, tiny_model_dir, tmp_path_factory, tmp_path):
    from dermground.ingest.synth import generate_dataset
    from dermground.train.ray_train import train_adapter

    data = tmp_path_factory.mktemp("ntl") / "data"
    generate_dataset(data, patients=6, images=12, seed=3, size=64, progress=False, workers=1)
    from dermground.train.config import TrainConfig

    hyper = dict(batch_size=4, lr=5e-3, max_steps=2, checkpoint_every=0, seed=0, dropout=0.0)
    run = dict(progress=False, cpus_per_worker=2)
    plain = train_adapter(data, tiny_model_dir, tmp_path / "plain", TrainConfig(**hyper), **run)
    with_ntl = train_adapter(data, tiny_model_dir, tmp_path / "ntl", TrainConfig(number_loss=0.3, **hyper), **run)
    # the same first batch: the logged objective is the cross-entropy plus 0.3 x a positive distance
    assert with_ntl.loss_curve[0][1] > plain.loss_curve[0][1]
    meta = json.loads((tmp_path / "ntl" / "dermground_adapter.json").read_text())
    assert meta["hyperparameters"]["number_loss"] == 0.3
    with pytest.raises(ValueError, match="--number-loss"):
        TrainConfig(number_loss=-1.0, **hyper)
