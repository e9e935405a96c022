"""The driver's progress lines of a training run (train.ray_train.show_progress on the CLI's bar)."""

from __future__ import annotations

import io
from pathlib import Path

from dermground.platform.progress import progress_bar
from dermground.train.ray_train import show_progress


def test_a_resumed_runs_rate_and_eta_count_only_its_own_steps():
    """Resumed at step 40 of 60, one step done in ~10 s: the line said 41 steps / elapsed (41x too fast,
    ETA seconds instead of minutes), and on any run the seconds of Ray's start-up and the model load
    before the first step were counted as training time. Rate and ETA now count this run's steps from
    its first one."""
    log = io.StringIO()
    bar = progress_bar(desc="train", unit="step", terminal=False, file=log, interval_s=0.0)
    show_progress(bar, {"start": 40, "total": 60, "resumed_from": 40}, "train", Path("/x/run-1"), progress=True)
    bar.start_t -= 10.0  # the first step of this run took about 10 s
    show_progress(bar, {"step": 41, "total": 60, "loss": 1.5}, "train", Path("/x/run-1"), progress=True)
    line = [text for text in log.getvalue().splitlines() if "41/60" in text][-1]
    assert "0.1 step/s" in line, line
    assert "eta 03:" in line, line  # 19 steps left at 0.1 step/s: ~190 s
    bar.close()
