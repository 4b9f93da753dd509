"""Whole-or-absent file writes: temp file in the same directory, flush, fsync, rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import MnistCnnError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a mix."""
    path = Path(path)
    try:  # a parent that is a file, or a folder we may not write in: one line naming the path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise MnistCnnError(f"could not write {path}: {_mkdir_failure(path.parent, e)}") from e
    try:
        # mkstemp makes the file 0600; give it the mode an ordinary new file (or the one it replaces) has
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise MnistCnnError(f"could not write {path}: {e.strerror or e}") from e
    # fsync the directory so the rename itself survives a crash
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def make_dir(path: str | os.PathLike, what: str = "directory") -> Path:
    """mkdir -p; a parent that is a file, or a folder we may not write in, is one line naming the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MnistCnnError(f"cannot make the {what} {path}: {_mkdir_failure(path, e)}") from None
    return path


def _mkdir_failure(folder: Path, error: OSError) -> str:
    """Why `folder` could not be made: mkdir says only 'File exists' or 'Not a directory' when one of the
    folders on the way is a file, so name that file."""
    for part in (folder, *folder.parents):
        if part.is_file():
            return f"{part} is a file, not a folder"
    return error.strerror or str(error)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
