"""Progress output: readable lines every few seconds in a log, a tqdm bar on a terminal."""

from __future__ import annotations

import io

from tqdm import tqdm

from dermground.platform.progress import LineProgress, progress_bar


def test_a_log_gets_whole_lines_without_carriage_returns() -> None:
    log = io.StringIO()
    with progress_bar(total=1000, desc="ingest lesions", unit="img", file=log, terminal=False, interval_s=3600) as bar:
        for step in range(1000):
            bar.update(1)
            bar.set_postfix(quarantined=step // 500)
            bar.refresh()  # a caller refreshing every step (train/ray_train.py) still gets no extra lines
    bar.refresh()  # after close: nothing more
    text = log.getvalue()
    assert "\r" not in text
    assert text.splitlines()[0] == "ingest lesions: 0/1000 img (0%) elapsed 00:00, ? img/s"
    (last,) = text.splitlines()[1:]  # the interval never passed: the start line and the final line only
    assert last.startswith("ingest lesions: 1000/1000 img (100%) elapsed ") and last.endswith("quarantined=1")


def test_lines_follow_the_interval_and_short_bars_stay_quiet() -> None:
    log = io.StringIO()
    bar = progress_bar(total=3, desc="predict", unit="img", file=log, terminal=False, interval_s=0.0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert [line.split(" elapsed")[0] for line in log.getvalue().splitlines()] == \
        ["predict: 0/3 img (0%)", "predict: 1/3 img (33%)", "predict: 2/3 img (67%)", "predict: 3/3 img (100%)"]
    quiet = io.StringIO()
    for _ in progress_bar(range(50), desc="image areaMM2", leave=False, file=quiet, terminal=False, interval_s=3600):
        pass
    assert quiet.getvalue() == ""
    unknown = io.StringIO()
    for _ in progress_bar(iter(range(7)), desc="scan", file=unknown, terminal=False, interval_s=3600):
        pass
    assert unknown.getvalue().splitlines()[-1].startswith("scan: 7 it elapsed ")


def test_a_terminal_gets_tqdm_and_disable_still_disables() -> None:
    screen = io.StringIO()
    bar = progress_bar(total=2, desc="synth", file=screen, terminal=True)
    assert type(bar) is tqdm and not isinstance(bar, LineProgress)
    bar.close()
    off = io.StringIO()
    with progress_bar(total=2, desc="x", file=off, terminal=False, disable=True) as bar:
        bar.update(2)
        bar.set_postfix(loss="0.1", refresh=False)
        bar.refresh()  # what train/ray_train.py does on every step
    assert off.getvalue() == ""
