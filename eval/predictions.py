"""Attribute prediction on the test split (paper §4.2, Figure 2): R² per attribute and a bar chart.

Every test-split image gets all 16 questions (answers strictly parsed). The prediction is the
mean of the answers pooled over V of the image's 8 turns and mirror images (`views`), K sampled
answers per view (`samples`): the model's expected value over what it is unsure of and over how
the crop happens to be turned (platform/predict.py); samples=0, views=1 gives the greedy answer.
R² is computed on the parsed answers; an unparsed answer counts against the parse rate, not the
R². The greedy answers to the image as given are scored too (`prediction_greedy.json`, same
format): the paper does not say how it decodes, and the two differ most where the model is unsure.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dermground.platform.out_folder import require_writable_folder
from dermground.platform.attributes import ATTRIBUTE_NAMES, get_attribute

PREDICTION_FILE = "prediction.json"
GREEDY_PREDICTION_FILE = "prediction_greedy.json"
FIGURE_FILE = "prediction_r2.png"
CLIP_R2 = -0.1  # the bar chart's floor

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttributeScore:
    r2: float
    parse_rate: float
    n: int


def r2_score(truth: Sequence[float], predicted: Sequence[float]) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (nan with fewer than 2 values or no variance)."""
    y, p = np.asarray(truth, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if y.size < 2:
        return float("nan")
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0.0:
        return float("nan")
    return 1.0 - float(((y - p) ** 2).sum()) / total


def score_predictions(truth: list[dict[str, float]], predictions: list[dict], attributes: Sequence[str]) -> dict[str, AttributeScore]:
    """Per attribute: R² over parsed answers, the parse rate, and n (images asked)."""
    scores = {}
    for name in attributes:
        pairs = [(t[name], p[name].value) for t, p in zip(truth, predictions) if p[name].value is not None]
        n = len(truth)
        scores[name] = AttributeScore(
            r2=r2_score([a for a, _ in pairs], [b for _, b in pairs]) if pairs else float("nan"),
            parse_rate=len(pairs) / n if n else float("nan"), n=n)
    return scores


def plot_r2(scores: dict[str, AttributeScore], path: Path, title: str) -> Path:
    """A bar chart of R² per attribute like the paper's Figure 2 (Agg backend, PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    # Bars stop at CLIP_R2 so one -5 does not squash the chart; those bars are hatched, and every
    # label prints the true value.
    values = [max(scores[n].r2, CLIP_R2) if np.isfinite(scores[n].r2) else 0.0 for n in names]
    clipped = [np.isfinite(scores[n].r2) and scores[n].r2 < CLIP_R2 for n in names]
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=120)
    bars = ax.bar(range(len(names)), values, color=["#C44E52" if c else "#4C72B0" for c in clipped])
    for bar, cut in zip(bars, clipped):
        if cut:
            bar.set_hatch("//")
    if any(clipped):
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(facecolor="#C44E52", hatch="//", label=f"R² below {CLIP_R2} (bar cut; label = value)")],
                  fontsize=7, loc="upper right", framealpha=1.0)
    for bar, name in zip(bars, names):
        r2 = scores[name].r2
        ax.text(bar.get_x() + bar.get_width() / 2, max(bar.get_height(), 0) + 0.01,
                "n/a" if not np.isfinite(r2) else f"{r2:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("R² (test split)")
    ax.set_ylim(min(0.0, min(values)) - 0.02, 1.22 if any(clipped) else 1.05)  # room for the legend above 1
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate_predictions(
    data_dir: str | Path,
    model_dir: str | Path,
    adapter_dir: str | Path | None,
    out_dir: str | Path,
    *,
    catalog_dir: str | Path | None = None,
    collection: str = "",
    attributes: Sequence[str] | None = None,
    max_images: int | None = None,
    batch_size: int = 8,
    samples: int = 16,
    views: int = 1,
    pool: str = "mean",
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Predict every attribute for every test-split image; write prediction.json, the PNG and catalog rows."""
    from dermground.platform.progress import progress_bar

    from dermground.platform.records import DUPLICATE_REASON, LesionRecord, read_records, unique_records
    from dermground.platform.model.loading import load_backbone
    from dermground.platform.predict import greedy_prediction, predict_attributes

    require_writable_folder(out_dir)  # before any work: a bad --out must not cost the whole run
    out = Path(out_dir)
    names = list(attributes or ATTRIBUTE_NAMES)
    for name in names:
        get_attribute(name)
    listed, duplicates = [], 0
    for item in unique_records(read_records(Path(data_dir), split="test")):
        if isinstance(item, LesionRecord):
            listed.append(item)
        elif item.reason == DUPLICATE_REASON:  # scored once, like ingest stores it once
            _log.warning("eval predict skips test record %s: field isic_id: %s", item.isic_id, item.reason)
            duplicates += 1
    if max_images is not None:
        listed = listed[:max_images]
    if not listed:
        raise ValueError(f"{data_dir} has no usable test-split images to evaluate on")
    backbone = load_backbone(model_dir, adapter_dir, device=device)
    records: list = []  # the ones whose image the gate took, in order
    predictions: list[dict] = []
    with progress_bar(total=len(listed), unit="img", desc="predict", disable=not progress) as bar:
        for start in range(0, len(listed), batch_size):
            chunk, images = _loaded(listed[start:start + batch_size])
            if chunk:
                predictions += predict_attributes(backbone, images, names, batch_size=batch_size,
                                                  suffix_batch=256, samples=samples, seed=seed,
                                                  views=views, pool=pool)
                records += chunk
            bar.update(min(batch_size, len(listed) - start))
    if not records:
        raise ValueError(f"{data_dir}: the image gate refused every test-split image (see the messages above)")
    truth = [r.attributes for r in records]
    scores = score_predictions(truth, predictions, names)
    skipped = duplicates + len(listed) - len(records)
    report = _report(scores, skipped)

    out.mkdir(parents=True, exist_ok=True)
    (out / PREDICTION_FILE).write_text(json.dumps(report, indent=2) + "\n")
    if samples or views > 1:
        greedy = [{n: greedy_prediction(get_attribute(n), p[n].raw) for n in names} for p in predictions]
        (out / GREEDY_PREDICTION_FILE).write_text(json.dumps(_report(score_predictions(truth, greedy, names), skipped),
                                                             indent=2) + "\n")
    elif (out / GREEDY_PREDICTION_FILE).exists():  # a plain greedy run: a sidecar from an earlier sampled run would mislead
        (out / GREEDY_PREDICTION_FILE).unlink()
    # parent/name: demo adapters are all called "adapter"; the folder above tells them apart
    label = "base model" if adapter_dir is None else f"adapter {Path(adapter_dir).parent.name}/{Path(adapter_dir).name}"
    decoding = decoding_label(samples, views, pool)
    finite = [s.r2 for s in scores.values() if np.isfinite(s.r2)]
    plot_r2(scores, out / FIGURE_FILE,
            f"Test-split R² per attribute ({label}, {decoding}, {len(records)} images, median "
            f"{np.median(finite) if finite else float('nan'):.2f})")

    if catalog_dir is not None:
        _write_catalog(Path(catalog_dir), records, predictions, scores, names, backbone.fingerprint,
                       str(adapter_dir) if adapter_dir is not None else "", collection, label, decoding)
    return report


def _loaded(records: list) -> tuple[list, list]:
    """(the records whose image the gate takes, their images); a refused one is skipped and named,
    with the field and the gate's rule, so that one poison test image costs only its own row."""
    from dermground.platform.images import INPUT_ERRORS, rejection_reason

    kept, images = [], []
    for record in records:
        try:
            images.append(record.load_image())
        except INPUT_ERRORS as exc:  # the same refusals as ingest's CPU stage and training
            _log.warning("eval predict skips test record %s: field image: %s", record.isic_id, rejection_reason(exc))
            continue
        kept.append(record)
    return kept, images


def decoding_label(samples: int, views: int, pool: str = "mean") -> str:
    """How a prediction was read, in words: "greedy", "mean of 16 samples", "median of 2 samples x 8 views"."""
    what = f"{pool} of {samples} samples" if samples else ("greedy" if views == 1 else f"{pool} of greedy answers")
    return what if views == 1 else f"{what} x {views} views"


def _report(scores: dict[str, AttributeScore], skipped: int = 0) -> dict[str, dict[str, float]]:
    # skipped: test images left out because their image was refused (each named in a warning)
    return {n: {"r2": s.r2, "parse_rate": s.parse_rate, "n": s.n, "skipped": skipped} for n, s in scores.items()}


def _write_catalog(catalog_dir: Path, records, predictions, scores, names, fingerprint: str, adapter: str,  # noqa: ANN001
                   collection: str, label: str, decoding: str) -> str:
    from dermground.platform.catalog import Catalog

    run_id = f"eval-predict-{uuid.uuid4().hex[:12]}"
    catalog = Catalog(catalog_dir)
    # Attribute-major order: a file's row groups then hold few attributes each, so the usual
    # `WHERE attribute = ...` skips most of them by their statistics.
    rows = [
        {"run_id": run_id, "collection": collection, "isic_id": r.isic_id, "split": r.split,
         "model_fingerprint": fingerprint, "adapter": adapter, "attribute": name,
         "value": p[name].value, "raw": p[name].raw, "ok": p[name].ok, "spread": p[name].spread,
         "samples": p[name].samples, "measured": r.attributes.get(name)}
        for name in names for r, p in zip(records, predictions)
    ]
    catalog.append("predictions", rows)
    details = json.dumps({"fingerprint": fingerprint, "adapter": adapter, "model": label, "decoding": decoding})
    summary = [
        {"run_id": run_id, "kind": "attribute_prediction", "method": label, "attribute": name, "metric": metric,
         "value": getattr(scores[name], metric), "n": scores[name].n, "details": details}
        for name in names for metric in ("r2", "parse_rate")
    ]
    catalog.append("evaluations", summary)
    return run_id
