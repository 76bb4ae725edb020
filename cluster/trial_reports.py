"""Train-to-Tune reports that cannot be lost: each Ray Train report of a Tune trial reaches Tune, in order,
before the trial's function returns (#17.2).

Ray's ``TuneReportCallback`` puts each report on a one-slot Ray queue from Train's controller, and the trial
actor's *main* thread moves it into Tune's local result queue while it polls. When ``fit()`` returns soon after
the last report, the function trainable's exit marker (``__duplicate__``) is put on that local queue by the
training thread, and the two race (Ray 2.60, ``ray/train/_internal/session.py`` ``get_next`` and
``function_trainable.py``):

* the marker arrives first while the main thread waits on the local queue: Tune takes it as the end of the
  trial and the last report is never read. A trial with one report per run keeps a 0-byte ``result.json``
  and no metrics, which is what ``make run`` once showed for a p=0.3 trial;
* the main thread has taken the report from the Ray queue when the marker fills the one-slot local queue: its
  put blocks forever and the trial hangs.

A trainable that puts its report on that queue and returns at once shows both: through Ray's own path, 3 of 8
such trials kept no result (each lost or hung until a time budget ended the search). Here the forwarding is done
by the trial's own thread instead: ``fit()`` runs in a helper thread, its controller callback puts each report on
a Ray queue, and the trial thread takes them off and calls ``tune.report`` itself, in order. It returns only after the
helper thread has ended and the queue is empty, so the exit marker always comes after the last report.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ray import tune
from ray.train import UserCallback
from ray.util.queue import Empty, Queue

CHECKPOINT_PATH_KEY = "checkpoint_path"  # the same key as Ray's TuneReportCallback
POLL_S = 0.5


class ForwardReports(UserCallback):
    """Runs in Train's controller: rank 0's metrics of each report, plus the checkpoint's path, onto ``queue``.
    The put returns once the item is in the queue, so every report has landed before ``fit()`` returns."""

    def __init__(self, queue: Queue):
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        item = dict(metrics[0])
        if checkpoint is not None:
            item[CHECKPOINT_PATH_KEY] = checkpoint.path
        self.queue.put(item)


def fit_reporting(fit: Callable[[list[UserCallback]], Any], report: Callable[[dict], None] = tune.report) -> Any:
    """Call ``fit(callbacks)`` (a Train run given ``callbacks``) in a helper thread and ``report`` each of its
    results from this thread, in order; return its value or raise its error once all results are reported.

    Call it from a Tune function trainable. When Tune stops the trial (ASHA), ``report`` raises ``SystemExit``
    here and Tune ends the trial actor, which ends the helper thread and Train's run with it, as before."""
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})  # one slot: Train waits while Tune judges a report
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fit([ForwardReports(queue)])
        except BaseException as exc:  # handed to the trial thread, which raises it after the last report
            outcome["error"] = exc

    helper = threading.Thread(target=run, name="cfgdiff-trial-fit", daemon=True)
    helper.start()
    while True:
        alive = helper.is_alive()  # read before the get: once it is False, every put has landed
        try:
            item = queue.get(block=alive, timeout=POLL_S if alive else None)
        except Empty:
            if alive:
                continue
            break
        report(item)  # raises SystemExit when Tune stops the trial; the queue then ends with the trial actor
    helper.join()
    queue.shutdown(force=True)  # nothing can put any more
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
