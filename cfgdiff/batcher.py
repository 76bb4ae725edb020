"""Continuous batching for the reconstruction service: jobs that arrive while the sampler is busy share its next call.

``@serve.batch`` closes a batch a few milliseconds after its first request, even while the replica is still busy
with the previous batch. Under steady load that splits the clients into alternating small and large batches
(at concurrency 16 the served rate fit batches of about 3 and 13 rows), and a small batch costs a whole chunk (the
sampler pads rows to fixed chunks so that results do not depend on batching). ``Batcher`` keeps one queue per
replica and one worker: whenever the sampler frees up, everything submitted meanwhile (up to ``max_jobs``, in
arrival order) runs in one call, in a thread, so the event loop keeps answering health checks.

Under a closed loop (clients that send their next request when answered), the clients answered by one call
come back just after the next call has started, and the split persists: 3 rows, then 13, then 3. So when calls
run back to back (the replica is loaded), the next call waits for its queue to fill to ``max_jobs`` for at most
``fill_fraction`` of the last call's duration (capped at ``max_fill_s``): at most a few percent of throughput,
and full batches. A call on an idle replica starts at once, so a lone request pays no wait.

A job whose request was cancelled (``job.cancelled``, set when its client's timeout passes) before its turn
is dropped without being computed, and the rest of its batch goes on; one cancelled while its call runs is
computed with the others and its answer discarded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any


class Batcher:
    """``await batcher.submit(jobs)`` -> one answer per job (``None`` for a job cancelled before its turn)."""

    def __init__(self, run: Callable[[list], list], max_jobs: int, fill_fraction: float = 0.05, max_fill_s: float = 0.5):
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be >= 1, got {max_jobs}")
        self.run, self.max_jobs = run, max_jobs
        self.fill_fraction, self.max_fill_s = fill_fraction, max_fill_s
        self.queue: deque[tuple[Any, asyncio.Future]] = deque()
        self.worker: asyncio.Task | None = None
        self.calls = 0  # sampler calls made
        self.dropped = 0  # jobs cancelled before their turn, never computed

    async def submit(self, jobs: list) -> list:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in jobs]
        self.queue.extend(zip(jobs, futures))
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._drain())
        return list(await asyncio.gather(*futures))

    def _take(self) -> list[tuple[Any, asyncio.Future]]:
        taken = []
        while self.queue and len(taken) < self.max_jobs:
            job, fut = self.queue.popleft()
            if fut.done() or getattr(job, "cancelled", False):
                self.dropped += 1
                _settle(fut, None)
            else:
                taken.append((job, fut))
        return taken

    async def _fill(self, last_call_s: float) -> None:
        """Back to back: wait (a little) for the queue to fill."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self.fill_fraction * last_call_s, self.max_fill_s)
        while len(self.queue) < self.max_jobs and loop.time() < deadline:
            await asyncio.sleep(0.002)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        last_call_s = None  # None: the replica was idle
        while self.queue:
            if last_call_s is not None:
                await self._fill(last_call_s)
            taken = self._take()
            if not taken:
                continue
            self.calls += 1
            t0 = loop.time()
            try:
                answers = await loop.run_in_executor(None, self.run, [job for job, _ in taken])
            except Exception as e:  # the callers get the error; the worker goes on with the queue
                for _, fut in taken:
                    _settle(fut, error=e)
                continue
            finally:
                last_call_s = loop.time() - t0
            for (_, fut), answer in zip(taken, answers):
                _settle(fut, answer)


def _settle(fut: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if fut.done():  # its submitter was cancelled
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
