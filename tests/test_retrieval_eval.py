"""`dermground eval retrieval` on a small real collection (tiny model, embedded engine)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dermground.platform.cli import cli
from dermground.platform.commands import context
from dermground.platform.settings import load_settings
from dermground.eval.retrieval import FIGURE_FILE, RESULT_FILE, TABLE_FILE, evaluate_retrieval
from dermground.eval.retrieval_metrics import box_stats, percentile_ranks
from tests.store_copies import copy_store


@pytest.fixture()
def eval_home(tmp_path: Path, search_collection) -> Path:
    home = tmp_path / "home"
    copy_store(search_collection["store_root"], home / "qdrant" / "lesions")
    copy_store(search_collection["image_only_root"], home / "qdrant" / "untuned")
    return home


def test_all_methods_write_json_figure_table_and_catalog_rows(eval_home: Path, search_collection) -> None:
    settings = load_settings(home=eval_home)
    out = eval_home / "eval"
    summary = evaluate_retrieval(settings, "lesions", out, untuned_collection="untuned", b=200, k=3,
                                 catalog_dir=settings.catalog_dir, progress=False)
    assert set(summary) == {"image_text", "hierarchical", "image", "image_untuned", "baseline", "random"}
    assert all(len(per_attr) == 16 for per_attr in summary.values())
    assert json.loads((out / RESULT_FILE).read_text()) == json.loads(json.dumps(summary))
    assert (out / FIGURE_FILE).read_bytes()[:4] == b"\x89PNG"
    assert "| areaMM2 |" in (out / TABLE_FILE).read_text()
    # b above the train size: hierarchical ranks exactly like image_text (the paper's claim, made exact).
    assert summary["hierarchical"] == summary["image_text"]
    # The untuned collection here holds the same image vectors, so (c) and (d) agree too.
    assert summary["image_untuned"] == summary["image"]

    # Method (c) recomputed by hand: cosine top-3 over train h_im, then the percentile metric.
    records, emb = search_collection["records"], search_collection["embeddings"]
    train = [i for i, r in enumerate(records) if r.split == "train"]
    test = [i for i, r in enumerate(records) if r.split == "test"]
    unit = emb.h_im / np.linalg.norm(emb.h_im, axis=1, keepdims=True)
    top = np.argsort(-(unit[test] @ unit[train].T), axis=1)[:, :3]
    values = np.array([r.attributes["areaMM2"] for r in records])
    want = box_stats(percentile_ranks(values[test], values[np.array(train)][top], values[train]))
    assert summary["image"]["areaMM2"]["median"] == pytest.approx(want.median)

    from dermground.platform.catalog import Catalog

    rows = Catalog(settings.catalog_dir).query(
        "SELECT count(*) AS n FROM evaluations WHERE kind = 'retrieval' AND metric = 'median'")
    assert rows[0]["n"] == 6 * 16
    # Every hit is recorded, and its percentiles give back the summary's medians.
    catalog = Catalog(settings.catalog_dir)
    hits = catalog.query("SELECT method, attribute, count(*) AS n, count(DISTINCT query_isic_id) AS queries, "
                         "median(percentile) AS median, max(rank) AS k FROM retrieval_hits "
                         "GROUP BY method, attribute")
    assert len(hits) == 6 * 16
    for row in hits:
        assert row["median"] == pytest.approx(summary[row["method"]][row["attribute"]]["median"])
        assert row["n"] == row["queries"] * row["k"] and row["k"] == 3
    area = {r.isic_id: r.attributes["areaMM2"] for r in records}
    recorded = catalog.query("SELECT query_isic_id, hit_isic_id, query_value, hit_value, difference "
                             "FROM retrieval_hits WHERE method = 'image' AND attribute = 'areaMM2'")
    assert recorded and all(r["query_value"] == pytest.approx(area[r["query_isic_id"]])
                            and r["hit_value"] == pytest.approx(area[r["hit_isic_id"]])
                            and r["difference"] == pytest.approx(r["hit_value"] - r["query_value"])
                            for r in recorded)


def test_cli_subset_and_clear_errors(eval_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "_current", None)
    runner = CliRunner()
    out = eval_home / "cli"
    ok = runner.invoke(cli, ["--home", str(eval_home), "eval", "retrieval", "--collection", "lesions",
                             "--out", str(out), "--methods", "image,random", "--attribute", "areaMM2", "--k", "2"])
    assert ok.exit_code == 0, ok.output
    assert set(json.loads((out / RESULT_FILE).read_text())) == {"image", "random"}
    bad = runner.invoke(cli, ["--home", str(eval_home), "eval", "retrieval", "--collection", "lesions",
                              "--out", str(out), "--methods", "image,clip"])
    assert bad.exit_code != 0 and "unknown method" in bad.output
    needs = runner.invoke(cli, ["--home", str(eval_home), "eval", "retrieval", "--collection", "lesions",
                                "--out", str(out), "--methods", "image_untuned"])
    assert needs.exit_code != 0 and "--untuned-collection" in needs.output
    monkeypatch.setattr(context, "_current", None)
