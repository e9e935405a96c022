"""Which attributes a model's features carry linearly: ridge probes from train-split to test-split images.

For every attribute, a ridge regression (features standardised, best of five penalties on the test
split, so an optimistic reading) from three feature sets of a (base, adapter) pair:
  visual  the vision tower's output (merged image tokens, flattened: 25 x 128 at 140 px)
  h_im    the image-only embedding (mean last-layer state over the image tokens)
  h_im_a  the attribute's own image+question embedding (last prompt token)
R² near 0 for `visual` means the vision tower does not hand the decoder that attribute in any
linear form, so no LoRA reading of the decoder can recover it; a `visual` R² above the model's
own answers means the decoder under-reads what the tower has.

Run: .venv/bin/python benchmarks/feature_probe.py --data H/demo/data --model H/models/base [--adapter H/models/adapter]
"""

from __future__ import annotations

import argparse

import numpy as np

from harness import machine_line  # first: the offline environment

PENALTIES = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def ridge_r2(train_x: np.ndarray, test_x: np.ndarray, train_y: np.ndarray, test_y: np.ndarray) -> float:
    """Best test R² of ridge regressions over PENALTIES (standardised features, intercept = mean)."""
    mean, scale = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / scale, (test_x - mean) / scale
    gram, target = a.T @ a, a.T @ (train_y - train_y.mean())
    best = -np.inf
    for penalty in PENALTIES:
        weights = np.linalg.solve(gram + penalty * np.eye(a.shape[1]), target)
        predicted = b @ weights + train_y.mean()
        r2 = 1 - ((test_y - predicted) ** 2).sum() / ((test_y - test_y.mean()) ** 2).sum()
        best = max(best, float(r2))
    return best


def main() -> None:
    import torch
    from tqdm import tqdm

    from dermground.platform.attributes import ATTRIBUTE_NAMES
    from dermground.platform.embed import Embedder
    from dermground.platform.model.loading import load_backbone
    from dermground.platform.records import LesionRecord, read_records

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="ISIC-format data folder (train and test splits)")
    parser.add_argument("--model", required=True, help="base model folder")
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder (default: the base alone)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(machine_line())
    torch.set_num_threads(args.threads)

    backbone = load_backbone(args.model, args.adapter, device="cpu", dtype="float32")
    embedder = Embedder(backbone, batch_size=8)
    # The vision tower's output is captured while the embedder runs it (one pass per image, not two).
    captured: list[torch.Tensor] = []
    backbone.core.model.visual.register_forward_hook(
        lambda _module, _inputs, out: captured.append(getattr(out, "pooler_output", out).detach()))

    def features(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        records = [r for r in read_records(args.data, split=split) if isinstance(r, LesionRecord)]
        visual, embedded = [], []
        for start in tqdm(range(0, len(records), 32), desc=split, unit="batch"):
            images = [r.load_image() for r in records[start:start + 32]]
            captured.clear()
            batch = embedder.embed(images)
            # image-major merged tokens of every prefix pass of this chunk -> one row per image
            visual.append(torch.cat(captured).reshape(len(images), -1).float().numpy())
            embedded.append(np.concatenate([batch.h_im] + [batch.h_im_a[n] for n in ATTRIBUTE_NAMES], axis=1))
        truth = np.array([[r.attributes[n] for n in ATTRIBUTE_NAMES] for r in records])
        return np.concatenate(visual), np.concatenate(embedded), truth

    train_v, train_e, train_y = features("train")
    test_v, test_e, test_y = features("test")
    d = backbone.hidden_size
    print(f"{'attribute':24s} {'visual':>7s} {'h_im':>7s} {'h_im_a':>7s}   (ridge R², {len(train_y)} train -> "
          f"{len(test_y)} test images; visual = {train_v.shape[1]} features)")
    for j, name in enumerate(ATTRIBUTE_NAMES):
        own = slice(d * (j + 1), d * (j + 2))
        scores = (ridge_r2(train_v, test_v, train_y[:, j], test_y[:, j]),
                  ridge_r2(train_e[:, :d], test_e[:, :d], train_y[:, j], test_y[:, j]),
                  ridge_r2(train_e[:, own], test_e[:, own], train_y[:, j], test_y[:, j]))
        print(f"{name:24s} " + " ".join(f"{s:7.3f}" for s in scores))


if __name__ == "__main__":
    main()
