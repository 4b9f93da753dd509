"""MNIST-style data: IDX and npz files in and out, the bundled copy, validation splits.

Images travel as uint8 tensors [N, 28, 28] and labels as int64 tensors [N]; what a model takes is
decided in `mnist_cnn.inputs` (`to_float`, `as_model_input`). Every file is untrusted:
each problem becomes one `MnistCnnError` line naming the file, and no header is believed before
the bytes behind it have been seen.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import math
import numbers
import os
import reprlib
import struct
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write_bytes
from .budgets import exists, is_dir, is_file, open_regular
from .errors import MnistCnnError
from .idx import DATA_BYTES, idx_bytes, read_at_most, read_idx

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
DIGITS = tuple(str(d) for d in range(NUM_CLASSES))  # the class names of MNIST, which data leaves as None
MAX_CLASSES = 1000  # named classes in one set (Quick, Draw! has 345): more is a wrong folder, not a data set

# The canonical MNIST files: SHA-256 and size of the *decompressed* IDX content (gzip bytes
# differ between compressors, the content does not).
CANONICAL = {
    "train-images-idx3-ubyte": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016),
    "train-labels-idx1-ubyte": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60008),
    "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7840016),
    "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10008),
}
# Which IDX file (by its usual name, shared by Fashion-MNIST and KMNIST) holds which array.
IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
TEST_KEYS = ("x_test", "y_test")  # all that evaluating a trained model needs
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# zipfile, zlib, lzma and numpy's .npy header parser each raise their own types on bad input.
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, lzma.LZMAError,
               NotImplementedError, RuntimeError, struct.error)
_verified: set[Path] = set()  # bundled files whose checksums passed in this process


@dataclass
class MnistData:
    """A train/test pair: uint8 images [N, 28, 28], int64 labels [N], where they came from, and the class names.

    Built by hand, it takes numpy arrays or tensors in what a Keras tutorial leaves too (a channel axis of 1,
    pixels / 255 as floats, one-hot or (N, 1) labels) and checks them as files are checked, naming the field
    at fault. The training split may be empty (a test set alone evaluates a run), the test split may not.
    `classes`: the name of each label 0..len-1 (EMNIST's letters, folder names); None is the ten digits 0..9.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.classes = checked_classes(self.classes, "MnistData.classes")
        for split in ("train", "test"):
            x, y = (np.asarray(getattr(self, f"{k}_{split}")) for k in "xy")  # tensors on the CPU, lists, arrays
            x, y = _checked_split(x, y, f"MnistData.x_{split}", f"MnistData.y_{split}", empty_ok=split == "train",
                                  num_classes=self.num_classes)
            setattr(self, f"x_{split}", torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)))
            setattr(self, f"y_{split}", torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))
        self.source = str(self.source)

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else NUM_CLASSES

    def __len__(self) -> int:
        """The number of training examples."""
        return len(self.x_train)

    def __repr__(self) -> str:
        named = f", classes={self.num_classes}" if self.classes else ""
        return f"MnistData(train={len(self.x_train)}, test={len(self.x_test)}, source={self.source!r}{named})"


def checked_classes(classes: Sequence[str] | None, name: str) -> tuple[str, ...] | None:
    """Class names as a tuple of distinct non-empty strings (2 to MAX_CLASSES); the ten digits "0".."9" are None."""
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not all(isinstance(c, str) and c.strip() for c in classes):
        raise MnistCnnError(f"{name}: expected a list of non-empty class names, got {reprlib.repr(classes)}")
    names = tuple(classes)
    if not 2 <= len(names) <= MAX_CLASSES:
        raise MnistCnnError(f"{name}: {len(names)} class names, expected 2 to {MAX_CLASSES}")
    if len(set(names)) != len(names):
        twice = next(c for c in names if names.count(c) > 1)
        raise MnistCnnError(f"{name}: class name {twice!r} is given twice")
    return None if names == DIGITS else names


def class_name(classes: Sequence[str] | None, index: int) -> str:
    """What class `index` is called: its name, or the digit itself when there are no names."""
    return classes[index] if classes else str(index)


# ---------------------------------------------------------------- npz files (Keras mnist.npz layout)

def read_npz(path: str | os.PathLike, *, test_only: bool = False) -> MnistData:
    """Read a Keras-style mnist.npz (x_train, y_train, x_test, y_test; only the last two if `test_only`);
    never unpickles."""
    path = Path(path).expanduser()
    keys = TEST_KEYS if test_only else tuple(IDX_NAMES)
    try:
        with open_regular(path, ".npz") as raw, zipfile.ZipFile(raw) as zf:
            held = [name.removesuffix(".npy") for name in zf.namelist() if name.endswith(".npy")]
            missing = [key for key in keys if key not in held]
            if missing:
                raise MnistCnnError(f"{path}: missing arrays {', '.join(missing)} (a Keras-style mnist.npz holds "
                                    f"{', '.join(IDX_NAMES)}; this one holds {_listing(held)})")
            arrays = {key: _read_npy(zf, key, f"{path}[{key}]") for key in keys}
    except FileNotFoundError:
        raise MnistCnnError(f"{path}: no such file") from None
    except _ZIP_ERRORS as e:
        raise MnistCnnError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    return _to_data(arrays, {key: f"{path}[{key}]" for key in keys}, str(path))


def _listing(names: Sequence[str], most: int = 8) -> str:
    """A short list for a message: what was found instead of what was expected."""
    shown = sorted(names)[:most]
    return (", ".join(shown) + (f" and {len(names) - most} more" if len(names) > most else "")) or "nothing"


def _read_npy(zf: zipfile.ZipFile, key: str, where: str) -> np.ndarray:
    # np.load would allocate the header's shape before reading a zip member; parse it ourselves.
    with zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise MnistCnnError(f"{where}: unsupported .npy format version {version}")
        if dtype.hasobject:
            raise MnistCnnError(f"{where}: holds Python objects (dtype {dtype}); refusing to unpickle")
        nbytes = math.prod(shape) * dtype.itemsize
        DATA_BYTES.check(nbytes, f"{where}: the header's shape {shape}")
        body = read_at_most(f, nbytes + 1)
    if len(body) != nbytes:
        raise MnistCnnError(f"{where}: the header declares shape {shape} ({nbytes:,} bytes of data) "
                            f"but the array holds {len(body):,}")
    return np.frombuffer(body, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def write_npz(path: str | os.PathLike, data: MnistData) -> Path:
    """Write `data` as a compressed Keras-style mnist.npz (uint8 images and labels), atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, x_train=data.x_train.numpy(), y_train=data.y_train.numpy().astype(np.uint8),
                        x_test=data.x_test.numpy(), y_test=data.y_test.numpy().astype(np.uint8))
    return atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------- loading MNIST-style sets

def recorded_path(path: str | os.PathLike) -> str:
    """A data path as runs and ensembles record it: absolute, so that evaluate finds it from any folder."""
    return str(Path(path).expanduser().absolute())


def recorded_source(data: MnistData) -> str | None:
    """What a run trained on `data` records as its `data`: None for the bundled MNIST, the absolute path of a
    file that is there, else a description of the set given in memory (which evaluate cannot read again)."""
    if data.source == "bundled":
        return None
    if data.source and exists(data.source):
        return recorded_path(data.source)
    return f"(data given in memory, source {data.source!r})"


def load_mnist(path: str | os.PathLike | None = None, *, verify: bool = True, test_only: bool = False) -> MnistData:
    """Load MNIST or any set in its format (Fashion-MNIST, KMNIST).

    `path`: None for the copy bundled in the package (checked against the canonical SHA-256 once
    per process unless `verify` is False); a directory holding the four IDX files, gzipped or
    not, under their usual or Kaggle-style names; or a Keras-style .npz file.
    `test_only`: read the test split alone (the t10k files, or x_test and y_test), which is all that
    evaluating a trained model needs; the training split is then empty.
    EMNIST, Kuzushiji, Quick, Draw! and image folders are told apart by their file names and read by
    `mnist_cnn.loaders.load_data`, with their class names.
    """
    if path is not None:
        from .loaders import detect_kind, load_data  # the other formats' readers build on this module's

        if detect_kind(path) is not None:
            return load_data(path, test_only=test_only)
    directory = bundled_mnist_dir() if path is None else Path(path).expanduser()
    keys = TEST_KEYS if test_only else tuple(IDX_NAMES)
    if path is None or is_dir(directory):
        files, arrays = _read_idx_dir(directory, keys)
        if path is None and verify:
            _check_canonical(files, arrays)
        return _to_data(arrays, files, "bundled" if path is None else str(directory))
    if is_file(directory):
        return read_npz(directory, test_only=test_only)
    raise MnistCnnError(f"{directory}: no such file or directory "
                        "(expected a directory of IDX files or a Keras-style .npz file)")


def _find_idx(directory: Path, name: str) -> Path:
    """`name` or its Kaggle spelling (train-images.idx3-ubyte), plain or .gz; Kaggle copies
    sometimes nest each file in a folder of the same name."""
    kaggle = name.replace("-idx", ".idx")
    candidates = [name, f"{name}.gz", kaggle, f"{kaggle}.gz"]
    for candidate in candidates:
        for file in (directory / candidate, directory / candidate / candidate):
            if file.is_file():
                return file
    try:
        found = [entry.name for entry in directory.iterdir()]
    except OSError:
        found = []
    raise MnistCnnError(f"{directory}: no {name} file (looked for {', '.join(candidates)}; found {_listing(found)})")


def _read_idx_dir(directory: Path, keys: Sequence[str]) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
    files = {key: _find_idx(directory, IDX_NAMES[key]) for key in keys}
    return files, {key: read_idx(file) for key, file in files.items()}


def _as_bytes(x: np.ndarray, name: str | Path) -> np.ndarray:
    """Images as uint8 [N, 28, 28]; also takes what a Keras tutorial leaves: a channel axis of 1 (either side)
    and pixels / 255 as floats, or any integer type, as long as the values are the same bytes."""
    if x.ndim == 4 and (x.shape[1] == 1 or x.shape[3] == 1):
        x = x[:, 0] if x.shape[1] == 1 else x[..., 0]
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise MnistCnnError(f"{name}: images have shape {x.shape}, expected (N, 28, 28)")
    if x.dtype == np.uint8 or x.dtype.kind not in "iuf" or x.size == 0:
        return x
    low, high = float(x.min()), float(x.max())
    scaled = x * 255.0 if x.dtype.kind == "f" and high <= 1.0 else x
    pixels = np.rint(scaled)
    if not (0 <= low and pixels.max() <= 255 and np.abs(scaled - pixels).max() < 1e-3):
        raise MnistCnnError(f"{name}: images of dtype {x.dtype} with values in [{low:g}, {high:g}] are not pixels "
                            f"0..255 (or 0..255 / 255); store the original uint8 images")
    return pixels.astype(np.uint8)


def _as_class_numbers(y: np.ndarray, name: str | Path, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Labels as one integer per image; also takes one-hot rows (Keras's to_categorical) and whole floats."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[1] == num_classes and y.size and np.isin(y, (0, 1)).all() and (y.sum(1) == 1).all():
        y = y.argmax(1)
    if y.dtype.kind == "f" and y.size and np.isfinite(y).all() and (y == np.rint(y)).all():
        y = y.astype(np.int64)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise MnistCnnError(f"{name}: labels have shape {y.shape} and dtype {y.dtype}, expected one integer per "
                            f"image (or one-hot rows of {num_classes})")
    return y


def _checked_split(x: np.ndarray, y: np.ndarray, x_name: str | Path, y_name: str | Path, *,
                   empty_ok: bool = False, num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """One split's images as uint8 [N, 28, 28] and labels as integers 0..num_classes-1, or one line naming the
    culprit."""
    x, y = _as_bytes(x, x_name), _as_class_numbers(y, y_name, num_classes)
    if x.dtype != np.uint8:
        raise MnistCnnError(f"{x_name}: images have dtype {x.dtype}, expected uint8")
    if len(x) == 0 and not (empty_ok and len(y) == 0):
        raise MnistCnnError(f"{x_name}: holds no images")
    if len(y) != len(x):
        raise MnistCnnError(f"{y_name}: {len(y)} labels for the {len(x)} images in {x_name}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = y.min() if y.min() < 0 else y.max()
        raise MnistCnnError(f"{y_name}: label {bad} out of range 0..{num_classes - 1}")
    return x, y


def _to_data(arrays: dict[str, np.ndarray], names: Mapping[str, str | Path], source: str,
             classes: Sequence[str] | None = None) -> MnistData:
    """Check the splits given (naming the file at fault) and wrap them as tensors; a split not given is empty."""
    classes = checked_classes(classes, f"{source}: class names")
    for split in ("train", "test"):
        x_key, y_key = f"x_{split}", f"y_{split}"
        if x_key in arrays:
            arrays[x_key], arrays[y_key] = _checked_split(arrays[x_key], arrays[y_key], names[x_key], names[y_key],
                                                          num_classes=len(classes) if classes else NUM_CLASSES)
        else:
            arrays[x_key], arrays[y_key] = np.empty((0, *IMAGE_SHAPE), np.uint8), np.empty(0, np.int64)
    x_train, y_train, x_test, y_test = (arrays[key] for key in IDX_NAMES)  # numpy: MnistData makes them tensors
    return MnistData(x_train, y_train, x_test, y_test, source=source, classes=classes)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the bundled copy and downloads

def bundled_mnist_dir() -> Path:
    """The folder inside the installed package that holds the four canonical IDX .gz files."""
    return Path(str(resources.files("mnist_cnn") / "datasets" / "mnist"))


def verify_bundled() -> None:
    """Check the bundled files against the canonical SHA-256 (once per process); raise if they differ."""
    directory = bundled_mnist_dir()
    if all(_find_idx(directory, name) in _verified for name in IDX_NAMES.values()):
        return  # nothing to decompress again
    _check_canonical(*_read_idx_dir(directory, tuple(IDX_NAMES)))


def _check_canonical(files: dict[str, Path], arrays: dict[str, np.ndarray]) -> None:
    for key, file in files.items():
        if file in _verified:
            continue
        # The IDX encoding is unique, so hashing the re-encoded array hashes the decompressed file.
        digest = hashlib.sha256(idx_bytes(arrays[key])).hexdigest()
        name = IDX_NAMES[key]
        if digest != CANONICAL[name][0]:
            raise MnistCnnError(f"{file}: checksum mismatch: SHA-256 of the content is "
                                f"{digest}, the canonical MNIST {name} is {CANONICAL[name][0]}")
        _verified.add(file)


def download_mnist(dest_dir: str | os.PathLike, *, mirrors: Sequence[str] = MIRRORS,
                   timeout: float = 30.0) -> Path:
    """Fetch the four MNIST .gz files from the first mirror that serves the canonical content.

    Only for machines with a network; `load_mnist()` never needs it (the package bundles MNIST).
    """
    dest = Path(dest_dir).expanduser()
    for name, (sha256, size) in CANONICAL.items():
        failures = []
        for mirror in mirrors:
            url = f"{mirror.rstrip('/')}/{name}.gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    raw = bytes(read_at_most(response, size + 1))  # MNIST's .gz is far smaller
                content = read_at_most(gzip.GzipFile(fileobj=io.BytesIO(raw)), size + 1)
            except (urllib.error.URLError, OSError, EOFError, zlib.error, ValueError) as e:
                failures.append(f"{url}: {getattr(e, 'reason', e)}")
                continue
            if hashlib.sha256(content).hexdigest() != sha256:
                failures.append(f"{url}: content does not match the canonical SHA-256")
                continue
            atomic_write_bytes(dest / f"{name}.gz", raw)
            break
        else:
            raise MnistCnnError(f"could not download {name}.gz ({'; '.join(failures)}); without a "
                                "network use load_mnist() for the bundled copy")
    return dest


# ---------------------------------------------------------------- splits and model input

def split_validation(
    x: torch.Tensor, y: torch.Tensor, *, validation_split: float | None = None, val_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split off the LAST part of the training data as validation, like Keras' `validation_split`.

    Give a fraction (`validation_split`, 0 <= f < 1) or a count (`val_size`), or neither for an
    empty validation set. Returns (x_train, y_train, x_val, y_val), views of the inputs.
    """
    n = len(x)
    if len(y) != n:
        raise MnistCnnError(f"split_validation: {len(y)} labels for {n} images")
    if validation_split is not None and val_size is not None:
        raise MnistCnnError("give validation_split or val_size, not both "
                            f"(got validation_split={validation_split!r}, val_size={val_size!r})")
    split_at = n
    if validation_split is not None:
        if (isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real)
                or not 0 <= validation_split < 1):
            raise MnistCnnError(f"validation_split={validation_split!r}: expected a fraction in [0, 1)")
        if validation_split:
            split_at = math.floor(n * (1.0 - validation_split))  # Keras' rounding
            if not 0 < split_at < n:
                raise MnistCnnError(f"validation_split={validation_split!r} leaves {split_at} of {n} "
                                    "examples for training: nothing to split off or nothing left")
    elif val_size is not None:
        if isinstance(val_size, bool) or not isinstance(val_size, numbers.Integral) or not 0 <= val_size < n:
            raise MnistCnnError(f"val_size={val_size!r}: expected a whole number from 0 to {n - 1}")
        split_at = n - int(val_size)
    return x[:split_at], y[:split_at], x[split_at:], y[split_at:]
