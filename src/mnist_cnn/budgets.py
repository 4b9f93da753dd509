"""Budgets for untrusted input, and the checked file access every reader goes through.

A budget is a ceiling a reader checks BEFORE it reads or allocates: a tiny file must not be able to claim
gigabytes. Each reader states its budget next to itself as a `Budget`; docs/limits.md lists them all. A user who
needs more sets the budget's environment variable (bytes, or a count), e.g. MNIST_CNN_MAX_DATA_BYTES=8e9.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import MnistCnnError


@dataclass(frozen=True)
class Budget:
    """A ceiling on what one reader takes: `default`, or the environment variable `env` where it is set."""

    env: str
    default: int
    unit: str = "bytes"

    @property
    def value(self) -> int:
        raw = os.environ.get(self.env)
        if raw is None:
            return self.default
        try:
            value = int(float(raw))
        except ValueError:
            raise MnistCnnError(f"{self.env}={raw!r}: expected a number of {self.unit}") from None
        if value < 1:
            raise MnistCnnError(f"{self.env}={raw!r}: expected a positive number of {self.unit}")
        return value

    def check(self, amount: int, what: str) -> None:
        """Refuse `amount` (declared or measured) above the budget, naming both and how to raise it."""
        if amount > self.value:
            raise MnistCnnError(f"{what}: {amount:,} {self.unit} is over the limit of {self.value:,} {self.unit} "
                                f"(set {self.env} to allow more)")


#: JSON/TOML/YAML documents: specs, grids, config.json, history.json, metrics.json
DOCUMENT_BYTES = Budget("MNIST_CNN_MAX_DOCUMENT_BYTES", 16 * 2**20)
#: safetensors files: weights, checkpoints, ensembles (keras-basic is 4.8 MB; ten ResNet-ish members fit)
WEIGHTS_BYTES = Budget("MNIST_CNN_MAX_WEIGHTS_BYTES", 4 * 2**30)


def describe(path: str | os.PathLike) -> str:
    """A path as one printable line: undecodable bytes of a file name as \\x escapes, never an encode error."""
    return os.fsdecode(os.fspath(path)).encode("utf-8", "backslashreplace").decode("utf-8")


def exists(path: str | os.PathLike) -> bool:
    """Path.exists() that names the path instead of raising: a name over 255 bytes, a folder we may not enter."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise MnistCnnError(f"cannot look at {describe(path)}: {_reason(e)}") from None
    return True


def is_dir(path: str | os.PathLike) -> bool:
    return exists(path) and Path(path).is_dir()


def is_file(path: str | os.PathLike) -> bool:
    return exists(path) and Path(path).is_file()


def _a(what: str) -> str:
    return f"{'an' if what[:1] in 'AEIOUaeiou' else 'a'} {what}"


def _reason(error: OSError) -> str:
    if error.errno == errno.ENAMETOOLONG:
        return "a name in it is too long (at most 255 bytes each)"
    return error.strerror or str(error)


def open_regular(path: str | os.PathLike, what: str) -> BinaryIO:
    """`path` opened for reading, if it is a regular file (links followed): a device, FIFO or socket, such as a
    link to /dev/zero, is refused before anything is read; any OSError is one line naming the path."""
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer before fstat can refuse it
        f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb")
    except IsADirectoryError:
        raise MnistCnnError(f"{describe(path)}: is a directory, expected {_a(what)} file") from None
    except FileNotFoundError:
        raise MnistCnnError(f"cannot read {what} file {describe(path)}: no such file") from None
    except OSError as e:
        raise MnistCnnError(f"cannot read {what} file {describe(path)}: {_reason(e)}") from None
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise MnistCnnError(f"{describe(path)}: not a regular file (a device, pipe or socket); expected "
                            f"{_a(what)} file")
    return f


def read_bytes(path: str | os.PathLike, budget: Budget, what: str) -> bytes:
    """The whole of a regular file (see open_regular) of at most `budget` bytes, refused before reading if over."""
    with open_regular(path, what) as f:
        budget.check(os.fstat(f.fileno()).st_size, f"{describe(path)} ({what})")
        try:
            data = f.read(budget.value + 1)  # bounded even if the file grows while we read it
        except OSError as e:
            raise MnistCnnError(f"cannot read {what} file {describe(path)}: {_reason(e)}") from None
    budget.check(len(data), f"{describe(path)} ({what})")
    return data
