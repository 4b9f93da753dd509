"""Minimal MNIST IDX reader shared by the peer scripts (numpy + gzip only).

Deliberately independent of the ``mnist_cnn`` package so the peers run in their own
virtual environments. Accepts the four standard files, gzipped or not:

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

(``test-`` is accepted as an alias for ``t10k-``; ``-idx3-ubyte`` may also be written ``.idx3-ubyte``).
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise ValueError(f"{path}: expected {expected} data bytes for shape {dims}, found {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find(directory: Path, split: str, kind: str) -> Path:
    prefixes = ["train"] if split == "train" else ["t10k", "test"]
    idx = "idx3" if kind == "images" else "idx1"
    candidates = []
    for p in prefixes:
        for sep in ("-", "."):
            for ext in (".gz", ""):
                candidates.append(directory / f"{p}-{kind}{sep}{idx}-ubyte{ext}")
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"{directory}: no {split} {kind} IDX file (looked for e.g. {candidates[0].name})"
    )


def load_mnist(directory: str | os.PathLike):
    """Return (x_train, y_train, x_test, y_test): uint8 [N,28,28] images and uint8 [N] labels."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: MNIST data directory does not exist")
    out = []
    for split in ("train", "test"):
        x = read_idx(_find(d, split, "images"))
        y = read_idx(_find(d, split, "labels"))
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
            raise ValueError(f"{d}: unexpected {split} shapes images {x.shape}, labels {y.shape}")
        out += [x, y]
    return tuple(out)


def default_data_dir() -> Path:
    """The package's bundled copy (src/mnist_cnn/datasets/mnist/), located relative to this file."""
    return Path(__file__).resolve().parents[2] / "src" / "mnist_cnn" / "datasets" / "mnist"


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON via temp file + rename so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def report(result: dict, json_out: str | os.PathLike | None) -> None:
    """The whole result to --json-out (when given), one summary line without the history to stdout."""
    if json_out:
        write_json(json_out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}))


def summarise_epochs(seconds: list[float], n_train: int) -> dict:
    """images/s over the steady-state epochs: all but the first (which includes tracing/compilation)
    when there are >= 2 epochs, else the single epoch."""
    steady = seconds[1:] if len(seconds) >= 2 else seconds
    mean = sum(steady) / len(steady) if steady else float("nan")
    return {
        "seconds_per_epoch": [round(s, 4) for s in seconds],
        "steady_seconds_per_epoch": round(mean, 4),
        "images_per_s": round(n_train / mean, 1) if steady and mean > 0 else None,
        "images_per_s_basis": "mean of epochs 2..N" if len(seconds) >= 2 else "epoch 1 (includes warm-up)",
    }
