"""cfgdiff.batcher: jobs submitted while the sampler is busy share its next call; cancelled jobs are skipped."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import pytest

from cfgdiff.batcher import Batcher


@dataclass
class Job:
    name: str
    cancelled: bool = False


class Sampler:
    """Records each call's jobs; the first call blocks until ``release`` is set (the sampler is busy)."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[list[str]] = []
        self.busy, self.release = threading.Event(), threading.Event()
        self.fail_on = fail_on

    def __call__(self, jobs):
        self.calls.append([j.name for j in jobs])
        if len(self.calls) == 1:
            self.busy.set()
            assert self.release.wait(10)
        if self.fail_on in self.calls[-1]:
            raise RuntimeError("sampler failed")
        return [f"answer {j.name}" for j in jobs]


async def _while_busy(sampler: Sampler, batcher: Batcher, later: list[list[Job]]):
    """Submit job a; once the sampler is busy with it, submit each list in ``later`` as its own batch."""
    first = asyncio.ensure_future(batcher.submit([Job("a")]))
    await asyncio.get_running_loop().run_in_executor(None, sampler.busy.wait, 10)
    rest = [asyncio.ensure_future(batcher.submit(jobs)) for jobs in later]
    await asyncio.sleep(0.05)  # every later batch is queued before the sampler frees up
    sampler.release.set()
    return await first, await asyncio.gather(*rest, return_exceptions=True)


def test_batches_submitted_while_busy_share_the_next_call():
    sampler = Sampler()
    b = Batcher(sampler, max_jobs=16)
    first, rest = asyncio.run(_while_busy(sampler, b, [[Job(f"r{i}")] for i in range(15)]))
    assert sampler.calls == [["a"], [f"r{i}" for i in range(15)]], "15 one-job batches ran as one call"
    assert first == ["answer a"] and rest == [[f"answer r{i}"] for i in range(15)]
    assert b.calls == 2 and b.dropped == 0


def test_max_jobs_caps_a_call_in_arrival_order():
    sampler = Sampler()
    b = Batcher(sampler, max_jobs=4)
    _, rest = asyncio.run(_while_busy(sampler, b, [[Job("b"), Job("c"), Job("d")], [Job("e"), Job("f")]]))
    assert sampler.calls == [["a"], ["b", "c", "d", "e"], ["f"]]
    assert rest == [["answer b", "answer c", "answer d"], ["answer e", "answer f"]]


def test_a_job_cancelled_before_its_turn_is_never_computed_and_the_rest_go_on():
    sampler = Sampler()
    b = Batcher(sampler, max_jobs=16)
    late = [Job("x"), Job("y"), Job("z")]

    async def scenario():
        first = asyncio.ensure_future(b.submit([Job("a")]))
        await asyncio.get_running_loop().run_in_executor(None, sampler.busy.wait, 10)
        rest = asyncio.ensure_future(b.submit(late))
        await asyncio.sleep(0.05)
        late[1].cancelled = True  # its client's timeout passed while it waited
        sampler.release.set()
        return await first, await rest

    first, rest = asyncio.run(scenario())
    assert sampler.calls == [["a"], ["x", "z"]] and rest == ["answer x", None, "answer z"]
    assert b.dropped == 1


def test_a_failing_call_fails_its_callers_and_the_queue_goes_on():
    sampler = Sampler(fail_on="bad")
    b = Batcher(sampler, max_jobs=2)
    _, rest = asyncio.run(_while_busy(sampler, b, [[Job("bad"), Job("b")], [Job("c")]]))
    assert isinstance(rest[0], RuntimeError) and rest[1] == ["answer c"]
    assert sampler.calls == [["a"], ["bad", "b"], ["c"]]


def test_max_jobs_must_be_positive():
    with pytest.raises(ValueError, match="max_jobs"):
        Batcher(lambda jobs: jobs, 0)


def test_back_to_back_calls_wait_briefly_for_a_full_queue_and_an_idle_one_starts_at_once():
    """A closed loop: clients answered by call 1 resend a moment after call 2 has begun waiting."""
    calls: list[tuple[list[str], float]] = []

    def run(jobs):
        calls.append(([j.name for j in jobs], time.perf_counter()))
        time.sleep(0.4)
        return [j.name for j in jobs]

    b = Batcher(run, max_jobs=4, fill_fraction=0.5, max_fill_s=1.0)  # waits at most 0.2 s after a 0.4 s call

    async def scenario():
        t0 = time.perf_counter()
        first = asyncio.ensure_future(b.submit([Job("a")]))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(b.submit([Job("b")]))
        await first  # call 1 is over: call 2 (b alone so far) waits for the queue to fill
        await asyncio.sleep(0.05)
        late = await asyncio.gather(b.submit([Job("c")]), b.submit([Job("d"), Job("e")]))
        return t0, await second, late

    t0, second, late = asyncio.run(scenario())
    assert [c for c, _ in calls] == [["a"], ["b", "c", "d", "e"]], "jobs arriving within the fill wait joined call 2"
    assert calls[0][1] - t0 < 0.05, "a call on an idle replica starts at once"
    assert second == ["b"] and late == [["c"], ["d", "e"]]


def test_the_fill_wait_is_bounded():
    calls = []

    def run(jobs):
        calls.append(time.perf_counter())
        time.sleep(0.2)
        return jobs

    b = Batcher(run, max_jobs=8, fill_fraction=0.25, max_fill_s=1.0)

    async def scenario():
        a = asyncio.ensure_future(b.submit([Job("a")]))
        await asyncio.sleep(0.05)
        await asyncio.gather(a, b.submit([Job("b")]))

    asyncio.run(scenario())
    gap = calls[1] - calls[0] - 0.2
    assert 0.03 < gap < 0.2, f"call 2 waited {gap:.3f} s for company (bound 0.05 s)"
