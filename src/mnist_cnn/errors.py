"""The one exception type for mistakes a user can make; the CLI prints it as one line."""

import signal


class MnistCnnError(Exception):
    """A user-facing error: the message names the file or value and what was expected."""


class TrainingInterrupted(MnistCnnError):
    """Ctrl-C or SIGTERM during training: the message says how to resume; `signum` is the signal that stopped it,
    `run_dir` the run whose checkpoint is kept."""

    def __init__(self, message: str, signum: int = signal.SIGINT, run_dir: str | None = None):
        super().__init__(message)
        self.signum = signum
        self.run_dir = run_dir
