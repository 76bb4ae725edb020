"""Progress of long stages (#17.6): an ETA from the recent rate, a line per interval off a terminal, a bar on one."""

from __future__ import annotations

import io
import logging

import pytest

from cfgdiff.progress import Progress, RecentRate, fmt_duration


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_eta_follows_the_recent_rate_not_the_average_since_the_start():
    # 100 steps at 10 step/s, then the host gets busy: 1 step/s. 900 steps remain at t=60 s.
    r = RecentRate(window_s=30.0)
    t, done = 0.0, 0
    for _ in range(100):
        t, done = t + 0.1, done + 1
        r.add(t, done)
    for _ in range(50):
        t, done = t + 1.0, done + 1
        r.add(t, done)
    assert r.rate() == pytest.approx(1.0)  # the last 30 s are all at 1 step/s
    assert r.eta_s(done, 1000) == pytest.approx(850.0)
    average = done / t  # 150 steps in 60 s: the old ETA said 340 s
    assert (1000 - done) / average == pytest.approx(340.0)


def test_rate_spans_everything_before_the_window_fills():
    r = RecentRate(window_s=30.0)
    r.add(0.0, 0)
    assert r.rate() is None and r.eta_s(0, 10) is None
    r.add(2.0, 4)
    r.add(4.0, 6)
    assert r.rate() == pytest.approx(1.5)


def test_one_log_line_per_interval_and_at_the_end(caplog):
    clock = Clock()
    p = Progress("train", 100, unit="step", interval_s=10.0, bar=False, clock=clock)
    with caplog.at_level(logging.INFO, logger="cfgdiff.progress"):
        for step in range(1, 101):
            clock.t += 0.5  # 2 step/s
            p.update(step, loss=0.5)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5  # at 10, 20, 30, 40 s, and the end at 50 s
    assert lines[0].startswith("train 20/100 steps") and "loss 0.5" in lines[0] and "2 step/s" in lines[0]
    assert "ETA 0:40" in lines[0]
    assert lines[-1].startswith("train 100/100 steps") and "ETA" not in lines[-1]


def test_start_at_does_not_credit_resumed_work_to_the_rate():
    clock = Clock()
    p = Progress("train", 1000, bar=False, clock=clock)
    clock.t = 100.0  # start-up
    p.start_at(500)
    clock.t = 110.0
    p.update(510)
    assert p.rate.rate() == pytest.approx(1.0) and p.eta_s() == pytest.approx(490.0)


def test_bar_on_a_terminal(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr("sys.stderr", buf)
    with Progress("reconstruct", 8, unit="row", bar=True) as p:
        p.update(4)
        p.note("half way")
        p.update(8)
    text = buf.getvalue()
    assert "reconstruct" in text and "8/8" in text and "half way" in text


def test_durations():
    assert fmt_duration(None) == "?" and fmt_duration(59.6) == "1:00" and fmt_duration(3725) == "1:02:05"


def test_a_stage_done_within_one_interval_writes_no_line(caplog):
    clock = Clock()
    p = Progress("write", 2048, unit="row", bar=False, clock=clock)
    with caplog.at_level(logging.INFO, logger="cfgdiff.progress"):
        clock.t = 0.3
        p.update(2048)
    assert caplog.records == []  # not "2048/2048 rows 6.5e+07 row/s": the command prints its own summary
