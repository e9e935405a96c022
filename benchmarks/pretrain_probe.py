"""What a (pre-trained) base model learned: R² on its own image-statistics questions, test split.

Diagnoses the tiny base (`dermground pretrain`): mean-type statistics (brightness, colour means)
are learned within a few hundred steps; spread/texture statistics (border_spread) are not, and
the attributes that depend on them (stdLExt, norm_color, radial_color_std_max) stay unlearned
by the LoRA stage too (docs/EVALUATION.md, "Why the weak attributes stay weak").

Run: .venv/bin/python benchmarks/pretrain_probe.py --model H/models/base --data H/demo/data [--images 300]
"""

from __future__ import annotations

import argparse

import numpy as np

from harness import machine_line  # first: the offline environment


def main() -> None:
    from dermground.platform.records import LesionRecord, read_records
    from dermground.platform.model.loading import load_backbone
    from dermground.platform.predict import answer_questions
    from dermground.eval.predictions import r2_score
    from dermground.train.pretrain import STATISTICS, image_statistics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="base model folder")
    parser.add_argument("--data", required=True, help="ISIC-format data folder (its test split is used)")
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    print(machine_line())

    backbone = load_backbone(args.model, device="cpu", dtype="float32")
    records = [r for r in read_records(args.data, split="test") if isinstance(r, LesionRecord)][: args.images]
    images = [r.load_image() for r in records]
    answers = answer_questions(backbone, images, [s.question for s in STATISTICS], batch_size=8)
    truth = [image_statistics(np.asarray(im)) for im in images]
    print(f"{'statistic':20s} {'R2':>7s} {'corr':>6s} {'parsed':>7s}   ({len(images)} test images)")
    for j, stat in enumerate(STATISTICS):
        pairs = [(t[stat.key], float(a[j])) for t, a in zip(truth, answers) if _is_number(a[j])]
        y, p = (np.array(v) for v in zip(*pairs)) if pairs else (np.array([]), np.array([]))
        corr = float(np.corrcoef(y, p)[0, 1]) if len(y) > 1 and y.std() > 0 and p.std() > 0 else float("nan")
        print(f"{stat.key:20s} {r2_score(y, p):7.3f} {corr:6.3f} {len(pairs) / len(images):7.2f}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    main()
