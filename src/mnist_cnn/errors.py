"""The one exception type for mistakes a user can make; the CLI prints it as one line, and so does IPython."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

_debugging = os.environ.get("MNIST_CNN_DEBUG", "") not in ("", "0")


def debug(on: bool = True) -> None:
    """Show the library's errors with their full traceback in IPython/Jupyter (also: MNIST_CNN_DEBUG=1)."""
    global _debugging
    _debugging = bool(on)


class MnistCnnError(Exception):
    """A user-facing error: the message names the file or value and what was expected."""

    @property
    def _render_traceback_(self) -> Callable[[], list[str]]:
        """IPython shows the lines this returns instead of the traceback, whose frames are the library's, not the
        user's; with debug() on, the attribute is absent and IPython shows the whole traceback."""
        if _debugging:
            raise AttributeError("_render_traceback_")
        return lambda: [f"{type(self).__name__}: {self}"]


class TrainingInterrupted(MnistCnnError):
    """Ctrl-C or SIGTERM during training: the message says how to resume; `signum` is the signal that stopped it,
    `run_dir` the run whose checkpoint is kept."""

    def __init__(self, message: str, signum: int = signal.SIGINT, run_dir: str | None = None):
        super().__init__(message)
        self.signum = signum
        self.run_dir = run_dir
