"""Deterministic patient-stratified train/test split.

A patient's side comes from sha256 of its id (never Python's salted `hash`), so every process,
machine and run agrees, and all lesions of one patient land on the same side.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "test"]
DEFAULT_TEST_FRACTION = 0.3  # the paper's split is about 70/30 by images
_SALT = "dermground-split-v1"


def patient_unit_interval(patient_id: str) -> float:
    """A stable pseudo-random number in [0, 1) for a patient id."""
    digest = hashlib.sha256(f"{_SALT}:{patient_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(patient_id: str, test_fraction: float = DEFAULT_TEST_FRACTION) -> Split:
    """`"test"` for about `test_fraction` of patients, `"train"` for the rest."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be within [0, 1], got {test_fraction}")
    return "test" if patient_unit_interval(patient_id) < test_fraction else "train"
