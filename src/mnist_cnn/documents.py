"""Read a user's TOML, JSON or YAML file into plain values; every failure is one line naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .budgets import DOCUMENT_BYTES, describe, read_bytes
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

    class UniqueKeys(yaml.SafeLoader):  # the safe loader: a file cannot construct Python objects
        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            # keys a "<<" merge brings in may be overridden: that is YAML, not a slip
            _refuse_twice([self.construct_object(k) for k, _ in node.value
                           if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge"])
            return super().construct_mapping(node, deep)

    loader = UniqueKeys(text)  # what yaml.safe_load does, with the key check
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _json(text: str) -> Any:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        _refuse_twice([key for key, _ in pairs])
        return dict(pairs)

    return json.loads(text, object_pairs_hook=unique)


def _refuse_twice(keys: list[Any]) -> None:
    """JSON and YAML readers keep the last of a repeated key silently (TOML's refuses it): one of the two was a slip."""
    seen = set()
    for key in keys:
        if key in seen:
            raise MnistCnnError(f"key {key!r} is given twice in the same object; keep one")
        seen.add(key)


_PARSERS = {".toml": _toml, ".json": _json, ".yaml": _yaml, ".yml": _yaml}


def read_document(path: str | os.PathLike, what: str, suffixes: tuple[str, ...] = tuple(_PARSERS)) -> Any:
    """The parsed content of `path`, a `what` file (e.g. "spec") in one of `suffixes`' formats."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise MnistCnnError(f"{path}: unknown {what} file type {suffix or 'without a suffix'!r}; "
                            f"expected {', '.join(suffixes[:-1])} or {suffixes[-1]}")
    try:
        text = read_bytes(path, DOCUMENT_BYTES, what).decode("utf-8")
    except UnicodeDecodeError as e:
        raise MnistCnnError(f"cannot read {what} file {describe(path)}: not UTF-8 text ({e.reason} at byte "
                            f"{e.start})") from None
    try:
        return _plain_values(_PARSERS[suffix](text))
    except MnistCnnError as e:
        raise MnistCnnError(f"{describe(path)}: {e}") from None
    except RecursionError:
        raise MnistCnnError(f"{describe(path)}: nested too deeply to read") from None
    except Exception as e:  # each parser has its own error type; all mean "not valid syntax"
        raise MnistCnnError(f"{describe(path)}: not valid {suffix[1:].upper()}: {str(e).splitlines()[0]}") from None


_PLAIN = (str, int, float, bool, type(None))


def _plain_values(document: Any) -> Any:
    """`document` if it holds only what JSON can (TOML and YAML also have dates and times, which no option takes);
    walked with a stack, not recursion, so any depth the parser accepted is checked."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif not isinstance(value, _PLAIN):
            raise MnistCnnError(f"holds a {type(value).__name__} ({value!r}); options take strings, numbers, "
                                "booleans, lists and tables (quote a date to keep it as text)")
    return document
