"""Retrieval evaluation outputs: retrieval.json, Figure-4-style boxplots and a medians table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dermground.platform.attributes import ATTRIBUTE_NAMES
from dermground.eval.retrieval_metrics import box_stats

# Ranks per method, per attribute: arrays of shape (queries, k) of percentile ranks.
Ranks = Mapping[str, Mapping[str, np.ndarray]]

METHOD_LABELS = {
    "image_text": "(a) image+text",
    "hierarchical": "(b) hierarchical",
    "image": "(c) image",
    "image_untuned": "(d) image untuned",
    "baseline": "(e) LAB hist+thumb",
    "random": "random",
}


def summarize(ranks: Ranks) -> dict[str, dict[str, dict[str, float | int]]]:
    """{method: {attribute: {"median", "q1", "q3", "n"}}} — the content of retrieval.json."""
    return {method: {attr: box_stats(values).to_dict() for attr, values in per_attr.items()}
            for method, per_attr in ranks.items()}


def write_summary(summary: Mapping[str, object], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    return path


def medians_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A markdown table: one row per attribute, one column per method (median percentile)."""
    methods = list(summary)
    attributes = [a for a in ATTRIBUTE_NAMES if any(a in summary[m] for m in methods)]
    lines = ["| attribute | " + " | ".join(METHOD_LABELS.get(m, m) for m in methods) + " |",
             "|---|" + "---:|" * len(methods)]
    for attr in attributes:
        cells = []
        for m in methods:
            stats = summary[m].get(attr)
            cells.append("" if stats is None else f"{stats['median']:.1f}")
        lines.append(f"| {attr} | " + " | ".join(cells) + " |")
    overall = []
    for m in methods:
        medians = [summary[m][a]["median"] for a in attributes if a in summary[m]]
        overall.append(f"**{float(np.median(medians)):.1f}**" if medians else "")
    lines.append("| *median over attributes* | " + " | ".join(overall) + " |")
    return "\n".join(lines) + "\n"


def plot_boxplots(ranks: Ranks, path: Path, title: str = "") -> Path:
    """One subplot per attribute, one box per method (like the paper's Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(ranks)
    attributes = [a for a in ATTRIBUTE_NAMES if any(a in ranks[m] for m in methods)]
    cols = 4
    rows = max(1, -(-len(attributes) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.1 * rows), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for ax, attr in zip(axes.ravel(), attributes):
        data = [np.asarray(ranks[m].get(attr, np.array([]))).ravel() for m in methods]
        box = ax.boxplot(data, showfliers=False, patch_artist=True, widths=0.6)
        for patch, colour in zip(box["boxes"], colours):
            patch.set_facecolor(colour)
            patch.set_alpha(0.7)
        ax.set_title(attr, fontsize=10)
        ax.set_ylim(0, 100)
        ax.set_xticks(range(1, len(methods) + 1), [chr(ord("a") + i) for i in range(len(methods))])
        ax.axhline(50, color="grey", lw=0.6, ls=":")
    for ax in axes.ravel()[len(attributes):]:
        ax.axis("off")
    legend = [f"{chr(ord('a') + i)}: {METHOD_LABELS.get(m, m)}" for i, m in enumerate(methods)]
    fig.suptitle((title + "\n" if title else "") + "percentile of |Δattribute|² among all train images "
                 "(lower is better)   " + "; ".join(legend), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # leave room for the two-line title
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
