"""Read a user's TOML, JSON or YAML file into plain values; every failure is one line naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import MnistCnnError


def _toml(text: str) -> Any:
    try:
        import tomllib
    except ImportError:  # the package allows Python 3.10, whose standard library has no TOML reader
        raise MnistCnnError("reading TOML needs Python 3.11 or newer") from None
    return tomllib.loads(text)


def _yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise MnistCnnError("reading YAML needs PyYAML (pip install pyyaml)") from None
    return yaml.safe_load(text)  # the safe loader: a file cannot construct Python objects


_PARSERS = {".toml": _toml, ".json": json.loads, ".yaml": _yaml, ".yml": _yaml}


def read_document(path: str | os.PathLike, what: str, suffixes: tuple[str, ...] = tuple(_PARSERS)) -> Any:
    """The parsed content of `path`, a `what` file (e.g. "spec") in one of `suffixes`' formats."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise MnistCnnError(f"{path}: unknown {what} file type {suffix or 'without a suffix'!r}; "
                            f"expected {', '.join(suffixes[:-1])} or {suffixes[-1]}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MnistCnnError(f"cannot read {what} file {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return _PARSERS[suffix](text)
    except MnistCnnError as e:
        raise MnistCnnError(f"{path}: {e}") from None
    except Exception as e:  # each parser has its own error type; all mean "not valid syntax"
        raise MnistCnnError(f"{path}: not valid {suffix[1:].upper()}: {str(e).splitlines()[0]}") from None
