"""What training prints: Keras's progress bar (on terminals, and in notebooks as a display updated in place) and
one line per epoch."""

from __future__ import annotations

import html
import sys
import time
from typing import Any, TextIO

import torch


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"Epoch {row['epoch']}/{epochs}", f"{row['seconds']:.1f}s"]
    parts += [f"{k}: {row[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in row]
    return " - ".join(parts) + f" - lr: {row['lr']:.2e}"


def bar_mode(stream: TextIO) -> str | None:
    """"notebook" inside a Jupyter kernel (JupyterLab, VS Code, classic notebooks), "terminal" on a TTY, else None:
    pipes and files, `!mnist-cnn` in a notebook included, get the epoch lines alone."""
    if "IPython" in sys.modules:  # only then: a plain script never pays for importing IPython
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and (type(shell).__name__ == "ZMQInteractiveShell" or hasattr(shell, "kernel")):
            return "notebook"
    return "terminal" if stream.isatty() else None


class BarText:
    """The bar as a notebook shows it: HTML in JupyterLab, VS Code and classic notebooks, plain text elsewhere."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.text)}</pre>"


class ProgressBar:
    """Keras's bar, redrawn every 20 steps and at the epoch's end (each draw syncs with the device to read the loss).

    On a terminal it is redrawn with '\\r'; in a notebook each epoch has one display, updated in place, so that a
    saved notebook keeps one output per epoch (its final state).
    """

    def __init__(self, shown: bool, stream: TextIO):
        self.stream, self.mode = stream, bar_mode(stream) if shown else None
        self.open = False  # a terminal bar's line is not ended yet
        self.handle: Any = None  # the epoch's notebook display

    def update(self, done: int, steps: int, start: float, sums: torch.Tensor) -> None:
        if self.mode is None or (done - 1) % 20 and done != steps:
            return
        width = int(30 * done / steps)
        bar = "=" * width + (">" if width < 30 else "") + "." * (29 - width)
        loss, acc = (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()
        text = f"{done}/{steps} [{bar}] - {time.perf_counter() - start:.0f}s - loss: {loss:.4f} - accuracy: {acc:.4f}"
        if self.mode == "terminal":
            self.stream.write("\r" + text)
            self.stream.flush()
            self.open = True
        elif self.handle is None:  # the epoch's first draw makes its display; later draws replace what it shows
            from IPython.display import display

            self.handle = display(BarText(text), display_id=True)
        else:
            self.handle.update(BarText(text))

    def end(self) -> None:
        """End the epoch's bar: the next message gets a line of its own, and the next epoch a new display."""
        if self.open:
            self.stream.write("\n")
        self.open, self.handle = False, None
