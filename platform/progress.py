"""Progress for long commands: a tqdm bar on a terminal, a readable log line every few seconds otherwise.

tqdm redraws its bar with carriage returns many times a second; written to a file (a demo log, a
container's stdout, CI) that is hundreds of kilobytes of frames. When stderr is not a terminal,
`progress_bar` returns the same tqdm object (update, set_postfix, close, iteration all work) but
printing one plain line per `interval_s`, and one at the end:

    ingest lesions: 12000/400000 img (3%) elapsed 04:25, eta 2:23:10, 45.2 img/s, quarantined=1

Use it wherever tqdm would be used: `progress_bar(items, desc="predict", unit="img", disable=not progress)`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

LINE_INTERVAL_S = 5.0
LINE_FORMAT = "{desc}: {n_fmt}{total_part} {unit}{percent_part} elapsed {elapsed}{eta_part}, {rate_fmt}{postfix}"


def stderr_is_terminal() -> bool:
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None)) and stream.isatty()


class _Lines:
    """A stream wrapper for tqdm's own writes: no carriage returns, no blank lines."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "")
        if text.strip():
            self.stream.write(text if text.endswith("\n") else text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class LineProgress(tqdm):
    """tqdm that writes whole lines (no carriage returns, no bar), at most one per mininterval."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A long bar (leave=True) says when it starts; a short one (leave=False) speaks only if it
        # lasts longer than the interval.
        self._lines_for_short = not kwargs.get("leave", True)
        kwargs["file"] = _Lines(kwargs.get("file") or sys.stderr)
        self._last_line_at: float | None = None
        self._shown_n: float | None = None
        self._closing = False
        super().__init__(*args, **kwargs)

    def refresh(self, nolock: bool = False, lock_args: Any = None) -> None:
        # Callers that refresh on every step (train/ray_train.py) still get one line per interval.
        if self.disable:
            return
        now = time.monotonic()
        if self._last_line_at is not None and now - self._last_line_at < self.mininterval:
            return
        self._last_line_at = now
        super().refresh(nolock=nolock, lock_args=lock_args)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)  # shown on the next line, not a line of its own

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(desc, refresh=False)

    @staticmethod
    def format_meter(n: float, total: float | None, elapsed: float, **kwargs: Any) -> str:  # type: ignore[override]
        unit = kwargs.get("unit") or "it"
        rate = kwargs.get("rate") or ((n - kwargs.get("initial", 0)) / elapsed if elapsed > 0 else None)  # as tqdm's
        known = total is not None and total > 0
        remaining = (total - n) / rate if known and rate else None
        postfix = kwargs.get("postfix")
        return LINE_FORMAT.format(
            desc=kwargs.get("prefix") or "progress", n_fmt=_count(n), unit=unit,
            total_part=f"/{_count(total)}" if known else "",
            percent_part=f" ({100.0 * n / total:.0f}%)" if known else "",
            elapsed=tqdm.format_interval(elapsed),
            eta_part=f", eta {tqdm.format_interval(remaining)}" if remaining is not None else "",
            rate_fmt=f"{rate:.3g} {unit}/s" if rate else f"? {unit}/s",
            postfix=f", {postfix}" if postfix else "")

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is None:
            if (self.n == 0 and self._lines_for_short) or (self._closing and self.n == self._shown_n):
                return True  # nothing new to say
            self._shown_n = self.n
            msg = self.format_meter(**self.format_dict)
        self.fp.write(msg.strip())
        self.fp.flush()
        return True

    def close(self) -> None:
        if not self.disable and self._lines_for_short:
            # a short bar that never printed stays silent at the end too; one that did, finishes its story
            self.leave = self.last_print_n > 0
        self._closing = True
        super().close()


def _count(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def progress_bar(iterable: Iterable[Any] | None = None, *, interval_s: float = LINE_INTERVAL_S,
                 terminal: bool | None = None, **kwargs: Any) -> tqdm:
    """A tqdm progress object (same arguments as tqdm): a live bar on a terminal, else a line every
    interval_s. `terminal` overrides the check of stderr (tests, forced logs)."""
    on_terminal = stderr_is_terminal() if terminal is None else terminal
    if kwargs.get("disable") is None:  # tqdm's "off unless a terminal" becomes "lines unless a terminal"
        kwargs["disable"] = False
    if on_terminal:
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs.pop("smoothing", None)
    return LineProgress(iterable, mininterval=interval_s, maxinterval=max(interval_s, 10.0), miniters=1,
                        smoothing=0, **kwargs)
