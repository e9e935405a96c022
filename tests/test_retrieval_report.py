"""Retrieval report: JSON summary, markdown medians table and the boxplot PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dermground.eval.retrieval_report import medians_table, plot_boxplots, summarize, write_summary


def _ranks() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {"image_text": {"areaMM2": rng.uniform(0, 20, (30, 5)), "deltaB": rng.uniform(0, 30, (30, 5))},
            "random": {"areaMM2": rng.uniform(0, 100, (30, 5)), "deltaB": rng.uniform(0, 100, (30, 5))}}


def test_summary_table_and_plot(tmp_path: Path) -> None:
    ranks = _ranks()
    summary = summarize(ranks)
    assert set(summary) == {"image_text", "random"}
    stats = summary["image_text"]["areaMM2"]
    assert stats["q1"] <= stats["median"] <= stats["q3"] < 20 and stats["n"] == 150
    written = json.loads(write_summary(summary, tmp_path / "retrieval.json").read_text())
    assert written["random"]["deltaB"]["median"] == summary["random"]["deltaB"]["median"]
    table = medians_table(summary)
    assert table.splitlines()[0].startswith("| attribute | (a) image+text | random |")
    assert "| areaMM2 |" in table and "median over attributes" in table
    png = plot_boxplots(ranks, tmp_path / "fig4.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
