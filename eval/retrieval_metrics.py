"""The paper's retrieval metric (§4.2, Figure 4), vectorised.

For a query I_q and a retrieved image I_r, the score is the percentile rank of
(a(I_r) - a(I_q))² among (a(I) - a(I_q))² over all train images I: 0 means no train image
is closer in the attribute, 50 is what a random pick gets. Lower is better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Queries per block: bounds the (block, k, n_train) comparison tensor's memory.
_BLOCK_ELEMENTS = 2**24


def percentile_ranks(query_values: np.ndarray, hit_values: np.ndarray,
                     train_values: np.ndarray) -> np.ndarray:
    """Percentile rank (0-100) of each hit's squared difference; shape (queries, k).

    Ties count half (mid-rank), so a hit equal to every train image scores 50, not 0 or 100.
    """
    query_values = np.asarray(query_values, dtype=np.float64)
    hit_values = np.asarray(hit_values, dtype=np.float64)
    train_values = np.asarray(train_values, dtype=np.float64)
    if hit_values.ndim != 2 or hit_values.shape[0] != query_values.shape[0]:
        raise ValueError(f"hit_values must be (queries, k); got {hit_values.shape} for "
                         f"{query_values.shape[0]} queries")
    if train_values.size == 0:
        raise ValueError("no train images to rank against")
    n_train = train_values.size
    out = np.empty(hit_values.shape, dtype=np.float64)
    block = max(1, _BLOCK_ELEMENTS // (n_train * max(1, hit_values.shape[1])))
    for start in range(0, query_values.size, block):
        q = query_values[start:start + block, None]
        train_diff = (train_values[None, :] - q) ** 2  # (b, n)
        hit_diff = (hit_values[start:start + block] - q) ** 2  # (b, k)
        below = (train_diff[:, None, :] < hit_diff[:, :, None]).sum(axis=2)
        ties = (train_diff[:, None, :] == hit_diff[:, :, None]).sum(axis=2)
        out[start:start + block] = 100.0 * (below + 0.5 * ties) / n_train
    return out


@dataclass(frozen=True)
class BoxStats:
    """The numbers behind one boxplot."""

    median: float
    q1: float
    q3: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "n": self.n}


def box_stats(values: np.ndarray) -> BoxStats:
    """Median and quartiles of a set of percentile ranks (NaNs ignored)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return BoxStats(float("nan"), float("nan"), float("nan"), 0)
    q1, median, q3 = np.percentile(flat, [25, 50, 75])
    return BoxStats(float(median), float(q1), float(q3), int(flat.size))
