"""The service's budgets for untrusted clients, stated once: defaults here, each one changeable by an
environment variable (what `uvicorn --factory`, gunicorn and containers pass on) or in Python.

| budget | default | environment variable |
|---|---|---|
| request body | 10 MB | MNIST_CNN_MAX_BODY_BYTES |
| pixels of one image (from its header) | 25,000,000 | MNIST_CNN_MAX_PIXELS |
| pixels of all images in one request (from their headers) | 50,000,000 | MNIST_CNN_MAX_REQUEST_PIXELS |
| decode threads | min(4, cores) | MNIST_CNN_DECODE_THREADS |
| requests waiting to decode (503 `busy` beyond) | 64 | MNIST_CNN_DECODE_QUEUE |
| whole request, first byte to last body byte | 30 s | MNIST_CNN_REQUEST_TIMEOUT_S |
| idle connection, before a request or between two | 5 s | MNIST_CNN_IDLE_TIMEOUT_S |
| open connections (503 `busy` beyond) | 256 | MNIST_CNN_MAX_CONNECTIONS |
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping

from .errors import MnistCnnError
from .preprocess import MAX_PIXELS


@dataclasses.dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 10 * 1024 * 1024  # a phone photo fits; anything bigger is refused while reading
    max_pixels: int = MAX_PIXELS
    max_request_pixels: int = 2 * MAX_PIXELS  # two phone photos: an upload of 80 such images costs a minute
    decode_threads: int = min(4, os.cpu_count() or 1)  # more decodes at once than cores gains no speed
    decode_queue: int = 64
    request_timeout_s: float = 30.0  # a 10 MB body at 3 Mbit/s arrives in time
    idle_timeout_s: float = 5.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
            if not ok or (field.type == "int" and not isinstance(value, int)):
                kind = "number" if field.type == "float" else "integer"
                raise MnistCnnError(f"{field.name} must be a positive {kind}, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> ServeLimits:
        """The defaults, replaced by any MNIST_CNN_<NAME> variable set, then by `overrides`."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            name = f"MNIST_CNN_{field.name.upper()}"
            if name in environ:
                try:
                    values[field.name] = (float if field.type == "float" else int)(environ[name])
                except ValueError:
                    raise MnistCnnError(f"{name} must be a number, got {environ[name]!r}") from None
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise MnistCnnError(f"unknown service limit {min(unknown)!r}; known: "
                                f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**{**values, **overrides})  # type: ignore[arg-type]
