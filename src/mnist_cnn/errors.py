"""The one exception type for mistakes a user can make; the CLI prints it as one line."""


class MnistCnnError(Exception):
    """A user-facing error: the message names the file or value and what was expected."""


class TrainingInterrupted(MnistCnnError):
    """Ctrl-C during training: a checkpoint was saved and the message says how to resume."""
