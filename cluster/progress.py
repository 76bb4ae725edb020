"""Training progress on the driver: rank 0 pushes events to a small actor, the driver draws them.

Ray Train V2 runs the training function in worker actors and its callbacks in a controller actor, so
nothing in a run executes on the driver. Rank 0 therefore sends a few numbers (step, loss, images/s,
validation scores) to a ``ProgressBoard`` actor without waiting for it, and the driver, while it waits
for ``fit()``, drains the board and feeds ``cfgdiff.progress.Progress``: a tqdm bar on a terminal, one
log line per interval otherwise. The board holds no CPU and works the same on a multi-node cluster.
"""

from __future__ import annotations

import time

import ray
import torch

from cfgdiff.progress import Progress


@ray.remote(num_cpus=0, max_restarts=0)
class ProgressBoard:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def push(self, event: dict) -> None:
        self.events.append(event)

    def drain(self) -> list[dict]:
        events, self.events = self.events, []
        return events


class TrainProgress:
    """The driver's view of one run: ``poll()`` while fit() runs, ``close()`` after it."""

    def __init__(self, total_steps: int, label: str = "train"):
        self.board = ProgressBoard.remote()
        self.progress = Progress(label, total_steps, unit="step")
        self.started = False

    def poll(self, timeout_s: float = 10.0) -> None:
        try:
            events = ray.get(self.board.drain.remote(), timeout=timeout_s)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            return  # progress is best-effort; the run itself reports its failures
        for ev in events:
            self.show(ev)

    def show(self, ev: dict) -> None:
        kind = ev.get("kind")
        if kind == "start":  # the workers are up (a restarted worker group starts again from its checkpoint)
            self.progress.start_at(ev["step"])
            if ev["step"]:
                self.progress.note(f"{'restarted' if self.started else 'resuming'} at step {ev['step']}")
            self.started = True
        elif kind == "step":
            info = {k: v for k, v in (("loss", ev.get("loss")), ("img/s", ev.get("images_per_s"))) if v is not None}
            self.progress.update(ev["step"], **info)
        elif kind == "val":
            w = f" (w={ev['w']:g})" if ev.get("w") is not None else ""
            self.progress.note(f"epoch {ev['epoch']} step {ev['step']}: val_loss {ev['val_loss']:.4f}  "
                               f"psnr {ev['psnr']:.2f} dB  ssim {ev['ssim']:.3f}{w}")

    def close(self) -> None:
        try:
            self.poll(timeout_s=2.0)
            ray.kill(self.board)
        except Exception:  # noqa: BLE001 - progress never hides the run's own outcome
            pass
        self.progress.close()


class BoardClient:
    """Rank 0's side: sends events to the board without waiting (a no-op on other ranks, ``board=None``).

    ``step`` accumulates the loss on the device and reads it back (one host sync) only when a step event is
    due, at most once per ``interval_s``, and at the last step."""

    def __init__(self, board, interval_s: float = 1.0):
        self.board, self.interval_s, self.last, self.images = board, interval_s, 0.0, 0
        self.loss_sum, self.loss_n = None, 0

    def send(self, event: dict) -> None:
        if self.board is not None:
            self.board.push.remote(event)

    def step(self, step: int, images: int, loss: torch.Tensor, last: bool = False) -> None:
        if self.board is None:
            return
        self.images += images
        loss = loss.detach().float()
        self.loss_sum, self.loss_n = (loss if self.loss_sum is None else self.loss_sum + loss), self.loss_n + 1
        now = time.time()
        if not (last or now - self.last >= self.interval_s):
            return
        ips = self.images / max(now - self.last, 1e-9) if self.last else None
        self.send({"kind": "step", "step": step, "loss": float(self.loss_sum) / self.loss_n, "images_per_s": ips})
        self.last, self.images, self.loss_sum, self.loss_n = now, 0, None, 0
