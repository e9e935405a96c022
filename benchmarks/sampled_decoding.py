"""Test-split R² of greedy answers against the mean of K sampled answers, for several K in one run.

The prediction of `eval predict` (and the API) is the mean of K answers sampled from the model
(platform/predict.py); this prints what K buys over the greedy answer and what it costs. The
first k samples of a K-sample run are exactly a k-sample run (the noise is drawn sample by
sample), so one run of the largest K scores every smaller K too.

Run: .venv/bin/python benchmarks/sampled_decoding.py --data H/demo/data --base H/models/base
     --adapter H/models/adapter [--images 614] [--samples 4,8,16,32] [--seed 0]
"""

from __future__ import annotations

import argparse


def main() -> None:
    import time
    from pathlib import Path

    import numpy as np

    from dermground.ingest.reader import LesionRecord, read_records
    from dermground.platform.attributes import ATTRIBUTES
    from dermground.platform.model.loading import load_backbone
    from dermground.platform.predict import answer_questions, sample_answers, summarise_samples
    from dermground.train.evaluate import r2_score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--images", type=int, default=614)
    parser.add_argument("--samples", default="4,8,16,32", help="comma-separated K values")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ks = sorted({int(k) for k in args.samples.split(",")})

    records = [r for r in read_records(Path(args.data), split="test") if isinstance(r, LesionRecord)][:args.images]
    backbone = load_backbone(args.base, args.adapter, device="cpu")
    questions = [a.question for a in ATTRIBUTES]
    greedy: list[list[str]] = []
    drawn: list[list[list[str]]] = []
    seconds = {"greedy": 0.0, "sampled": 0.0}
    for start in range(0, len(records), 8):
        images = [r.load_image() for r in records[start:start + 8]]
        began = time.perf_counter()
        greedy += answer_questions(backbone, images, questions, batch_size=8, suffix_batch=256)
        seconds["greedy"] += time.perf_counter() - began
        began = time.perf_counter()
        drawn += sample_answers(backbone, images, questions, max(ks), seed=args.seed, batch_size=8, suffix_batch=256)
        seconds["sampled"] += time.perf_counter() - began

    def scores(predict) -> list[tuple[float, float]]:  # noqa: ANN001 - (image, question) -> value or None
        rows = []
        for q, attribute in enumerate(ATTRIBUTES):
            pairs = [(r.attributes[attribute.name], v) for i, r in enumerate(records)
                     if (v := predict(i, q)) is not None]
            rows.append((r2_score([t for t, _ in pairs], [v for _, v in pairs]), len(pairs) / len(records)))
        return rows

    columns = {"greedy": scores(lambda i, q: ATTRIBUTES[q].parse_value(greedy[i][q]))}
    for k in ks:
        columns[f"mean of {k}"] = scores(lambda i, q, k=k: summarise_samples(ATTRIBUTES[q], greedy[i][q],
                                                                                drawn[i][q][:k]).value)
    print(f"{'attribute':<24}" + "".join(f"{name:>12}" for name in columns))
    for q, attribute in enumerate(ATTRIBUTES):
        print(f"{attribute.name:<24}" + "".join(f"{column[q][0]:>12.3f}" for column in columns.values()))
    for label, pick in (("median R2", np.median), ("min R2", np.min)):
        print(f"{label:<24}" + "".join(f"{pick([r for r, _ in column]):>12.3f}" for column in columns.values()))
    print(f"{'parse rate':<24}" + "".join(f"{np.mean([p for _, p in column]):>12.3f}" for column in columns.values()))
    per_answer = seconds["sampled"] / (len(records) * len(questions) * max(ks))
    print(f"{len(records)} test images; greedy {seconds['greedy']:.1f} s, {max(ks)} samples {seconds['sampled']:.1f} s "
          f"({per_answer * 1e3:.2f} ms per sampled answer, 2 threads)")


if __name__ == "__main__":
    main()
