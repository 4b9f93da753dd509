"""What training prints: Keras's progress bar on terminals and one line per epoch."""

from __future__ import annotations

import sys
import time
from typing import Any

import torch


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"Epoch {row['epoch']}/{epochs}", f"{row['seconds']:.1f}s"]
    parts += [f"{k}: {row[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in row]
    return " - ".join(parts) + f" - lr: {row['lr']:.2e}"


class ProgressBar:
    """Keras's bar, redrawn every 20 steps (each draw syncs with the device); on a terminal only."""

    def __init__(self, shown: bool):
        self.shown, self.open = shown, False

    def update(self, done: int, steps: int, start: float, sums: torch.Tensor) -> None:
        if not self.shown or (done - 1) % 20 and done != steps:
            return
        width = int(30 * done / steps)
        bar = "=" * width + (">" if width < 30 else "") + "." * (29 - width)
        loss, acc = (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()
        sys.stdout.write(f"\r{done}/{steps} [{bar}] - {time.perf_counter() - start:.0f}s - loss: {loss:.4f}"
                         f" - accuracy: {acc:.4f}")
        sys.stdout.flush()
        self.open = True

    def end(self) -> None:
        """End the bar's line, so that the next message has a line of its own."""
        if self.open:
            sys.stdout.write("\n")
            self.open = False
