"""Progress of long stages (training steps, trials, rows): a tqdm bar on a terminal, and one log line per
interval otherwise (a redirected console, a log file, a notebook that set up ``logging``).

The ETA comes from the *recent* rate, over the last ``window_s`` seconds, not from the average since
the start: under a changing load (another job on the host, a slow first epoch) the average said 11 min
with 37 min to go.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable

logger = logging.getLogger("cfgdiff.progress")


class RecentRate:
    """Units per second over a sliding window of (time, done) points.

    The window keeps the last point older than ``window_s`` as its left edge, so the rate always spans
    at least ``window_s`` once that much time has passed, and spans everything before that."""

    def __init__(self, window_s: float = 30.0):
        self.window_s = window_s
        self.points: deque[tuple[float, float]] = deque()

    def add(self, t: float, done: float) -> None:
        self.points.append((t, done))
        while len(self.points) > 2 and self.points[1][0] <= t - self.window_s:
            self.points.popleft()

    def rate(self) -> float | None:
        if len(self.points) < 2:
            return None
        (t0, d0), (t1, d1) = self.points[0], self.points[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 and d1 > d0 else None

    def eta_s(self, done: float, total: float) -> float | None:
        r = self.rate()
        return None if r is None else max(total - done, 0) / r


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``update(done, **info)`` as work advances; ``note(text)`` for a line that must not break the bar.

    ``bar=None`` draws a tqdm bar when stderr is a terminal; otherwise an INFO line on the
    ``cfgdiff.progress`` logger every ``interval_s`` seconds and at the end."""

    def __init__(self, label: str, total: int, unit: str = "step", interval_s: float = 10.0,
                 window_s: float = 30.0, bar: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.unit, self.interval_s, self.clock = label, total, unit, interval_s, clock
        self.rate = RecentRate(window_s)
        self.done, self.info, self.lines = 0, {}, 0  # lines: log lines written (a stage done within one
        # interval writes none: its command prints its own summary)
        self.last_line = clock()
        self.rate.add(self.last_line, 0)
        self._bar = None
        if bar if bar is not None else (sys.stderr.isatty() and logger.isEnabledFor(logging.INFO)):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, dynamic_ncols=True,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def start_at(self, done: int) -> None:
        """The work itself starts now (after start-up), at ``done`` (a resumed run): the rate counts from here."""
        self.done = done
        self.rate = RecentRate(self.rate.window_s)
        self.rate.add(self.clock(), done)
        self.last_line = self.clock()
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def update(self, done: int, **info) -> None:
        now = self.clock()
        self.done, self.info = done, {**self.info, **info}
        self.rate.add(now, done)
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
            self._bar.set_postfix_str(self._suffix(), refresh=True)
        elif now - self.last_line >= self.interval_s or (done >= self.total and self.lines):
            self.last_line, self.lines = now, self.lines + 1
            logger.info("%s %d/%d %s  %s", self.label, done, self.total, self.unit + "s", self._suffix())

    def eta_s(self) -> float | None:
        return 0.0 if self.done >= self.total else self.rate.eta_s(self.done, self.total)

    def _suffix(self) -> str:
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.info.items()]
        r = self.rate.rate()
        if r is not None:
            parts.append(f"{r:.3g} {self.unit}/s")
        if self.done < self.total:
            parts.append(f"ETA {fmt_duration(self.eta_s())}")
        return ", ".join(parts)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            logger.info(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
