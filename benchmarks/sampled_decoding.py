"""Test-split R² of greedy answers against the mean of K sampled answers pooled over V views, in one run.

The prediction of `eval predict` (and the API) is the mean of the answers to an image in V of
its 8 turns and mirror images, K sampled answers per view (platform/predict.py); this prints
what K and V buy over the greedy answer and what they cost. The first k samples of a K-sample
run are exactly a k-sample run (the noise is drawn sample by sample), and the first v views of a
V-view run are exactly a v-view run, so one run of the largest K and V scores every smaller
pair too (v in 1, 2, 4, 8: the groups).

Run: .venv/bin/python benchmarks/sampled_decoding.py --data H/demo/data --base H/models/base
     --adapter H/models/adapter [--images 614] [--samples 4,8,16,32] [--views 1] [--seed 0]
"""

from __future__ import annotations

import argparse

from harness import machine_line  # first: the offline environment


def main() -> None:
    import time
    from pathlib import Path

    import numpy as np

    from dermground.platform.records import LesionRecord, read_records
    from dermground.platform.attributes import ATTRIBUTES
    from dermground.platform.model.loading import load_backbone
    from dermground.platform.model.views import MAX_VIEWS, dihedral_view
    from dermground.platform.predict import answer_questions, sample_answers, summarise_samples
    from dermground.eval.predictions import r2_score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--images", type=int, default=614)
    parser.add_argument("--samples", default="4,8,16,32", help="comma-separated K values (per view)")
    parser.add_argument("--views", type=int, choices=range(1, MAX_VIEWS + 1), default=1,
                        help="largest number of views V; every group size up to it (1, 2, 4, 8) is scored")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(machine_line())
    ks = sorted({int(k) for k in args.samples.split(",")})
    view_counts = [v for v in (1, 2, 4, 8) if v <= args.views]

    records = [r for r in read_records(Path(args.data), split="test") if isinstance(r, LesionRecord)][:args.images]
    backbone = load_backbone(args.base, args.adapter, device="cpu")
    questions = [a.question for a in ATTRIBUTES]
    greedy: list[list[list[str]]] = []  # [image][question][view]
    drawn: list[list[list[str]]] = []  # [image][question][view * K + k]
    seconds = {"greedy": 0.0, "sampled": 0.0}
    for start in range(0, len(records), 8):
        images = [r.load_image() for r in records[start:start + 8]]
        began = time.perf_counter()
        per_view = [answer_questions(backbone, [dihedral_view(im, v) for im in images], questions, batch_size=8,
                                     suffix_batch=256) for v in range(args.views)]
        greedy += [[[per_view[v][i][q] for v in range(args.views)] for q in range(len(questions))]
                   for i in range(len(images))]
        seconds["greedy"] += time.perf_counter() - began
        began = time.perf_counter()
        drawn += sample_answers(backbone, images, questions, max(ks), seed=args.seed, batch_size=8, suffix_batch=256,
                                views=args.views)
        seconds["sampled"] += time.perf_counter() - began

    def scores(predict) -> list[tuple[float, float]]:  # noqa: ANN001 - (image, question) -> value or None
        rows = []
        for q, attribute in enumerate(ATTRIBUTES):
            pairs = [(r.attributes[attribute.name], v) for i, r in enumerate(records)
                     if (v := predict(i, q)) is not None]
            rows.append((r2_score([t for t, _ in pairs], [v for _, v in pairs]), len(pairs) / len(records)))
        return rows

    def pooled(k: int, v: int):  # noqa: ANN202 - the first k samples of each of the first v views
        def predict(i: int, q: int) -> float | None:
            texts = [drawn[i][q][view * max(ks) + s] for view in range(v) for s in range(k)]
            return summarise_samples(ATTRIBUTES[q], greedy[i][q][0], texts).value
        return predict

    columns = {"greedy": scores(lambda i, q: ATTRIBUTES[q].parse_value(greedy[i][q][0]))}
    for v in view_counts[1:]:
        columns[f"greedy x{v}v"] = scores(lambda i, q, v=v: summarise_samples(ATTRIBUTES[q], greedy[i][q][0],
                                                                                greedy[i][q][:v]).value)
    for v in view_counts:
        for k in ks:
            columns[f"{k}" if v == 1 else f"{k} x{v}v"] = scores(pooled(k, v))
    names = list(columns)
    for at in range(0, len(names), 8):  # 8 columns per block keeps lines readable
        block = names[at:at + 8]
        print(f"{'attribute':<24}" + "".join(f"{name:>11}" for name in block))
        for q, attribute in enumerate(ATTRIBUTES):
            print(f"{attribute.name:<24}" + "".join(f"{columns[n][q][0]:>11.3f}" for n in block))
        for label, pick in (("median R2", np.median), ("min R2", np.min)):
            print(f"{label:<24}" + "".join(f"{pick([r for r, _ in columns[n]]):>11.3f}" for n in block))
        print(f"{'parse rate':<24}" + "".join(f"{np.mean([p for _, p in columns[n]]):>11.3f}" for n in block))
        print()
    per_answer = seconds["sampled"] / (len(records) * len(questions) * max(ks) * args.views)
    print(f"{len(records)} test images, columns 'K' = mean of K samples, 'K xVv' = K samples in each of V views; "
          f"greedy ({args.views} view(s)) {seconds['greedy']:.1f} s, {max(ks)} samples x {args.views} view(s) "
          f"{seconds['sampled']:.1f} s ({per_answer * 1e3:.2f} ms per sampled answer, 2 threads)")


if __name__ == "__main__":
    main()
