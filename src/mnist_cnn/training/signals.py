"""Stopping between two steps: while training, Ctrl-C and SIGTERM only ask for a stop, which the loop takes after
the step it is in (with a checkpoint); a second one interrupts at once."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import TrainingInterrupted


class StopRequested(Exception):
    """A stop signal arrived; raised between two steps."""


class StopSignals:
    """A context that notes SIGINT and SIGTERM. Off under torchrun (`enabled` False): ranks would see the signal at
    different steps, so they keep the default behaviour and resume from the newest regular checkpoint."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: list[int] = []
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if self.enabled:
            self.previous = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _note(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        if len(self.received) > 1:
            raise KeyboardInterrupt

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def interrupted(self, message: str, out: Path) -> TrainingInterrupted:
        """The error that ends the run; the CLI exits with the status of the signal (a second one's)."""
        return TrainingInterrupted(message, self.received[-1] if self.received else signal.SIGINT, str(out))
