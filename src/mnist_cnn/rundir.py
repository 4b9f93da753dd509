"""Which folders are ours to write, and one process at a time in each.

A folder is an mnist-cnn output folder only when it says so: MARKER, a small JSON file written into it before
anything else. `claim` refuses any other non-empty folder, so a user's model.safetensors, metrics.json or notes
are never overwritten, and takes LOCK, an advisory flock held until the work is done: a second process writing
the same folder gets one line instead of half of each result. The kernel drops a flock when its holder dies, so
a killed run leaves no stale lock behind. Folders written before the marker existed (config.json beside
checkpoints/ or spec.json for a run, ensemble.safetensors or members/ for an ensemble) still count as ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .atomic import atomic_write_json, make_dir
from .budgets import DOCUMENT_BYTES, describe, exists, read_bytes
from .errors import MnistCnnError

MARKER = ".mnist-cnn-run"
LOCK = ".mnist-cnn-lock"
FORMAT = "mnist-cnn-dir/1"
_LEGACY = {"run": (("config.json", "checkpoints"), ("config.json", "spec.json")),
           "ensemble": (("ensemble.safetensors",), ("config.json", "members"))}


def kind_of(folder: Path) -> str | None:
    """'run' or 'ensemble' for a folder of ours (marked, or written before markers), None for any other."""
    marker = folder / MARKER
    if exists(marker):
        try:
            value = json.loads(read_bytes(marker, DOCUMENT_BYTES, "marker"))
        except (MnistCnnError, ValueError):
            value = None
        if not isinstance(value, dict) or value.get("format") != FORMAT:
            raise MnistCnnError(f"{describe(marker)} is not a marker this version of mnist-cnn wrote (expected "
                                f"format {FORMAT!r}); move it away if the folder is not an mnist-cnn output")
        return str(value.get("kind"))
    for kind, patterns in _LEGACY.items():
        if any(all(exists(folder / name) for name in names) for names in patterns):
            return kind
    return None


def check_out(out: str | os.PathLike, kind: str, flag: str = "--out") -> Path:
    """`out` if it is new, empty, or a `kind` folder of ours; anything else is refused in one line."""
    out = Path(out)
    if not exists(out):
        return out
    if not out.is_dir():
        what = "a file" if out.is_file() else "a device or other special file"
        raise MnistCnnError(f"{flag} {describe(out)} is {what}, not a folder")
    try:
        foreign = [p.name for p in out.iterdir() if p.name != LOCK]
    except OSError as e:
        raise MnistCnnError(f"cannot look inside {describe(out)}: {e.strerror or e}") from None
    found = kind_of(out) if foreign else kind
    if found is None:
        shown = ", ".join(sorted(foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
        raise MnistCnnError(f"{describe(out)} is not empty ({shown}) and is not an mnist-cnn {kind} folder (no "
                            f"{MARKER} in it); nothing was written: choose a new or empty {flag}")
    if found != kind:
        raise MnistCnnError(f"{describe(out)} holds a {'training run' if found == 'run' else found}; write the "
                            f"{kind} to another {flag}")
    return out


@contextlib.contextmanager
def claim(out: str | os.PathLike, kind: str, flag: str = "--out") -> Iterator[Path]:
    """Check `out` (see check_out), make it, mark it as a `kind` folder, and hold its lock until the block ends."""
    out = Path(out)
    created = not exists(check_out(out, kind, flag))
    out = make_dir(out, f"{kind} directory")
    try:
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise MnistCnnError(f"cannot lock {describe(out)}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise MnistCnnError(f"{describe(out)} is in use by another mnist-cnn process (pid {holder}); wait for "
                                f"it to finish or choose another {flag}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        check_out(out, kind, flag)  # again under the lock: another process may have written it meanwhile
        if not exists(out / MARKER):
            atomic_write_json(out / MARKER, {"format": FORMAT, "kind": kind})
        yield out
    finally:
        if created:  # a start that failed before writing anything leaves no folder behind
            _remove_if_bare(out)
        os.close(fd)  # closing the last descriptor releases the flock


def _remove_if_bare(folder: Path) -> None:
    with contextlib.suppress(OSError):
        if {p.name for p in folder.iterdir()} <= {MARKER, LOCK}:
            for name in (MARKER, LOCK):
                (folder / name).unlink(missing_ok=True)
            folder.rmdir()
