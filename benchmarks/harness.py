"""What every benchmark shares: an offline environment, one line about the machine, percentiles, a timer.

Benchmarks run as scripts (`python benchmarks/X.py`: this folder is sys.path[0]), so they
`import harness` by name, before anything that loads transformers: importing it sets the offline
environment, because a benchmark never downloads (its models are built locally).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import numpy as np

T = TypeVar("T")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def set_offline_environment() -> None:
    """Hugging Face libraries offline, unless the caller's environment says otherwise."""
    for name, value in OFFLINE.items():
        os.environ.setdefault(name, value)


set_offline_environment()  # on import: huggingface_hub reads these when it is first imported


def load_line() -> str:
    """The load average now, against the CPUs: other sessions on a shared machine show up here."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def machine_line() -> str:
    """One line to head a benchmark's output: machine, CPUs, Python, load average and UTC time."""
    return (f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
            f"{load_line()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")


def percentiles_ms(seconds: Sequence[float], points: Sequence[float] = (50, 90, 99)) -> dict[float, float]:
    """The given percentiles (numpy's linear interpolation) of durations in seconds, in milliseconds."""
    if len(seconds) == 0:
        raise ValueError("no durations to summarise")
    values = np.percentile(np.asarray(seconds, dtype=np.float64) * 1000.0, list(points))
    return {point: float(value) for point, value in zip(points, values, strict=True)}


def timed(work: Callable[[], T], synchronize: Callable[[], object] | None = None) -> tuple[float, T]:
    """(seconds, result) of work(). `synchronize` (e.g. torch.cuda.synchronize) runs before the clock
    starts and before it stops, so that work queued on an asynchronous device is counted."""
    if synchronize is not None:
        synchronize()
    started = time.perf_counter()
    result = work()
    if synchronize is not None:
        synchronize()
    return time.perf_counter() - started, result
