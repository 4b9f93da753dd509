"""The 28x28 sets people move to after MNIST, read into the same uint8 tensors with their class names.

    emnist     EMNIST's gzipped IDX (emnist-letters-train-images-idx3-ubyte.gz, ...) and its *-mapping.txt;
               its images are stored transposed and are put upright here
    kuzushiji  Kuzushiji-MNIST / Kuzushiji-49 (kmnist-train-imgs.npz, k49-test-labels.npz, ...) and *_classmap.csv
    quickdraw  Quick, Draw! bitmaps: one .npy per class (N x 784 uint8), the class named by the file
    folder     image files in one folder per class: root/train/<class>/*, root/test/<class>/*, or root/<class>/*

`load_data(path)` tells them apart by their file names (`detect_kind`); anything else is read by
`data.load_mnist` as MNIST's IDX or npz files. Every reader checks counts against a budget before
reading the pixels, and every problem is one `MnistCnnError` line naming the file.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data import (
    IMAGE_SHAPE,
    MAX_CLASSES,
    MnistData,
    _listing,
    _read_npy,
    _to_data,
    load_mnist,
)
from .errors import MnistCnnError
from .idx import read_idx
from .preprocess import IMAGE_SUFFIXES, load_image

KINDS = ("emnist", "kuzushiji", "quickdraw", "folder")
MAX_IMAGES = 2_000_000  # images in one set, 1.6 GB as uint8 (EMNIST byclass, the largest, has 814,255)
MAX_TABLE_BYTES = 1 << 20  # a mapping or class-map file: a few KB for 1,000 classes
QUICKDRAW_CAP = 5_000  # images per class read from a Quick, Draw! file (they hold 100,000 to 300,000)
TEST_FRACTION = 1 / 7  # held out where a set has no test split of its own: MNIST's 10,000 of 70,000
SPLIT_SEED = 0  # the held-out images and the interleaving of classes are the same on every machine
ORIENTATIONS = ("auto", "upright", "transposed")

_EMNIST = re.compile(r"^(emnist-[a-z]+)-(train|test)-images-idx3-ubyte(\.gz)?$")
_KUZUSHIJI = re.compile(r"^(kmnist|k49)-(train|test)-imgs\.npz$")


# ---------------------------------------------------------------- which reader

def detect_kind(path: str | os.PathLike) -> str | None:
    """The reader a path needs, from its file names: one of KINDS, or None for MNIST's own IDX or npz files.
    An EMNIST prefix such as ~/emnist/gzip/emnist-letters (a folder holding every split) is "emnist"."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return "emnist" if p.name.startswith("emnist-") and p.parent.is_dir() and not p.exists() else None
    try:
        entries = list(p.iterdir())
    except OSError:
        return None
    names = [e.name for e in entries]
    if any(_EMNIST.match(n) for n in names):
        return "emnist"
    if any(_KUZUSHIJI.match(n) for n in names):
        return "kuzushiji"
    if any(n.endswith(".npy") for n in names):
        return "quickdraw"
    # Kaggle's MNIST nests each IDX file in a folder of its name: folders of "ubyte" files are not classes
    if any(e.is_dir() for e in entries) and not any("ubyte" in n or n.endswith(".npz") for n in names):
        return "folder"
    return None


def load_data(path: str | os.PathLike, kind: str | None = None, *, test_only: bool = False,
              classes: Sequence[str] | None = None, orientation: str = "auto", per_class: int = QUICKDRAW_CAP,
              test_fraction: float = TEST_FRACTION) -> MnistData:
    """Read any supported set: `kind` one of KINDS, or None to tell from the file names (MNIST's formats then).

    `classes`: names for the labels 0..n-1, replacing the file's own (e.g. Fashion-MNIST's "T-shirt", ...).
    `orientation`: "auto" puts EMNIST's files (named emnist-*) upright and leaves others as they are;
    "transposed" puts any set's images upright, "upright" takes them as they are.
    `per_class` (Quick, Draw!): images read per class file. `test_fraction`: the share of each class held out
    for testing where the set has no test split (Quick, Draw!, one folder of class folders).
    """
    if kind is not None and kind not in KINDS:
        raise MnistCnnError(f"unknown data kind {kind!r}: expected one of {', '.join(KINDS)} (or None to detect it)")
    if orientation not in ORIENTATIONS:
        raise MnistCnnError(f"orientation={orientation!r}: expected one of {', '.join(ORIENTATIONS)}")
    if not 0 < test_fraction < 1:
        raise MnistCnnError(f"test_fraction={test_fraction!r}: expected a fraction in (0, 1)")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise MnistCnnError(f"per_class={per_class!r}: expected a positive whole number of images per class")
    kind = kind or detect_kind(path)
    if kind == "emnist":
        data = read_emnist(path, test_only=test_only, orientation=orientation)
    elif kind == "kuzushiji":
        data = read_kuzushiji(path, test_only=test_only)
    elif kind == "quickdraw":
        data = read_quickdraw(path, per_class=per_class, test_fraction=test_fraction)
    elif kind == "folder":
        data = read_image_folder(path, test_fraction=test_fraction)
    else:
        data = load_mnist(path, test_only=test_only)
    if orientation == "transposed" and kind != "emnist":  # IDX files in EMNIST's layout under other names
        data = MnistData(data.x_train.transpose(1, 2), data.y_train, data.x_test.transpose(1, 2), data.y_test,
                         source=data.source, classes=data.classes)
    if classes is not None:
        data = MnistData(data.x_train, data.y_train, data.x_test, data.y_test, source=data.source,
                         classes=tuple(classes))
    if test_only and len(data.x_train):  # sets split here are read whole; evaluating needs the test split alone
        data = MnistData(data.x_train[:0], data.y_train[:0], data.x_test, data.y_test, source=data.source,
                         classes=data.classes)
    return data


# ---------------------------------------------------------------- EMNIST

def read_emnist(path: str | os.PathLike, *, test_only: bool = False, orientation: str = "auto") -> MnistData:
    """One EMNIST split: a folder holding it alone, or DIR/emnist-SPLIT for a folder holding several."""
    p = Path(path).expanduser()
    directory, prefix = (p, None) if p.is_dir() else (p.parent, p.name)
    splits = sorted({m.group(1) for e in _entries(directory) if (m := _EMNIST.match(e))})
    if prefix is not None and prefix not in splits:
        raise MnistCnnError(f"{p}: no {prefix}-*-images-idx3-ubyte files in {directory} "
                            f"(EMNIST splits there: {_listing(splits)})")
    if prefix is None and len(splits) != 1:
        raise MnistCnnError(f"{directory}: holds the EMNIST splits {', '.join(splits)}: give one of them as "
                            f"{directory / splits[0]}" if splits else f"{directory}: no EMNIST IDX files")
    prefix = prefix or splits[0]
    arrays: dict[str, np.ndarray] = {}
    names: dict[str, str | Path] = {}
    for split in ("test",) if test_only else ("train", "test"):
        for key, part in ((f"x_{split}", f"{split}-images-idx3-ubyte"), (f"y_{split}", f"{split}-labels-idx1-ubyte")):
            names[key] = file = _existing(directory, f"{prefix}-{part}", (".gz", ""))
            arrays[key] = _read_idx_within(file)
    for key, array in arrays.items():  # EMNIST stores each image column by column: swap its axes back
        if key.startswith("x_") and array.ndim == 3 and orientation != "upright":
            arrays[key] = array.transpose(0, 2, 1)
    mapping = directory / f"{prefix}-mapping.txt"
    offset, classes = _emnist_mapping(mapping) if mapping.is_file() else (0, _numbered(arrays))
    for key, array in arrays.items():
        if key.startswith("y_") and offset:  # letters count from 1 in its files
            arrays[key] = array.astype(np.int64) - offset
    return _to_data(arrays, names, str(p), classes)


def _read_idx_within(path: Path) -> np.ndarray:
    """read_idx after a look at the header: more than MAX_IMAGES images are refused before decompressing."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(4)
            dims = struct.unpack(f">{head[3]}I", f.read(4 * head[3])) if len(head) == 4 else ()
    except (OSError, EOFError, zlib.error, struct.error) as e:
        raise MnistCnnError(f"{path}: cannot read its IDX header ({e})") from None
    if dims and dims[0] > MAX_IMAGES:
        raise MnistCnnError(f"{path}: declares {dims[0]:,} items, more than the {MAX_IMAGES:,} this reader takes")
    return read_idx(path)  # which checks the header properly


def _emnist_mapping(path: Path) -> tuple[int, tuple[str, ...]]:
    """`label code [code...]` lines -> (the first label, one name per label): the character of the first code,
    so letters' `1 65 97` (A and a, merged) is "A"."""
    rows = []
    for number, line in enumerate(_table_text(path).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            label, *codes = (int(f) for f in fields)
            rows.append((label, chr(codes[0])))
        except (ValueError, IndexError, OverflowError):
            raise MnistCnnError(f"{path}: line {number} is {line.strip()!r}, expected a label and character "
                                "codes (e.g. '1 65 97')") from None
    labels = [label for label, _ in rows]
    if not rows or labels != list(range(labels[0], labels[0] + len(labels))):
        raise MnistCnnError(f"{path}: expected consecutive labels, one per line, got "
                            f"{_listing([str(label) for label in labels])}")
    return labels[0], tuple(name for _, name in rows)


# ---------------------------------------------------------------- Kuzushiji

def read_kuzushiji(path: str | os.PathLike, *, test_only: bool = False) -> MnistData:
    """Kuzushiji-MNIST or -49: {kmnist,k49}-{train,test}-{imgs,labels}.npz (each array in arr_0), with the
    characters' names from {kmnist,k49}_classmap.csv where it is there."""
    directory = Path(path).expanduser()
    sets = sorted({m.group(1) for e in _entries(directory) if (m := _KUZUSHIJI.match(e))})
    if len(sets) != 1:
        raise MnistCnnError(f"{directory}: holds both kmnist and k49 files; put each set in a folder of its own")
    prefix = sets[0]
    arrays: dict[str, np.ndarray] = {}
    names: dict[str, str | Path] = {}
    for split in ("test",) if test_only else ("train", "test"):
        for key, part in ((f"x_{split}", "imgs"), (f"y_{split}", "labels")):
            names[key] = file = _existing(directory, f"{prefix}-{split}-{part}.npz", ("",))
            arrays[key] = _npz_array(file)
    classmap = directory / f"{prefix}_classmap.csv"
    classes = _classmap(classmap) if classmap.is_file() else _numbered(arrays)
    return _to_data(arrays, names, str(directory), classes)


def _npz_array(path: Path) -> np.ndarray:
    """The one array of a numpy .npz (arr_0), refused from the zip's directory when larger than the budget."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.namelist()
            if len(members) != 1:
                raise MnistCnnError(f"{path}: holds {_listing(members)}, expected one array (arr_0)")
            if zf.getinfo(members[0]).file_size > MAX_IMAGES * math.prod(IMAGE_SHAPE) + 4096:
                raise MnistCnnError(f"{path}: its array is larger than {MAX_IMAGES:,} 28x28 images")
            return _read_npy(zf, members[0].removesuffix(".npy"), str(path))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, NotImplementedError) as e:
        raise MnistCnnError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None


def _classmap(path: Path) -> tuple[str, ...]:
    """Kuzushiji's `index,codepoint,char` table -> the characters, in index order."""
    rows = list(csv.DictReader(io.StringIO(_table_text(path))))
    if not rows or not {"index", "char"} <= rows[0].keys():
        raise MnistCnnError(f"{path}: expected a CSV table with the columns index,codepoint,char")
    if [r["index"] for r in rows] != [str(i) for i in range(len(rows))]:
        raise MnistCnnError(f"{path}: the index column should count 0, 1, 2, ... in order")
    return tuple(r["char"] for r in rows)


# ---------------------------------------------------------------- Quick, Draw!

def read_quickdraw(path: str | os.PathLike, *, per_class: int = QUICKDRAW_CAP,
                   test_fraction: float = TEST_FRACTION) -> MnistData:
    """A folder of Quick, Draw! .npy bitmaps (cat.npy or full_numpy_bitmap_cat.npy: N x 784 uint8), one class each
    in name order; the first `per_class` drawings of each, `test_fraction` of them held out for testing."""
    directory = Path(path).expanduser()
    files = sorted(directory / e for e in _entries(directory) if e.endswith(".npy"))
    _check_class_count(directory, len(files), "class .npy files")
    images, labels = [], []
    for label, file in enumerate(files):
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)  # mapped: only the capped rows are read
        except (OSError, ValueError) as e:
            raise MnistCnnError(f"{file}: not a readable .npy file ({e})") from None
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or math.prod(array.shape[1:]) != 784:
            raise MnistCnnError(f"{file}: holds {array.dtype} of shape {array.shape}, expected uint8 drawings "
                                "(N, 784) or (N, 28, 28)")
        images.append(np.array(array[:per_class]).reshape(-1, *IMAGE_SHAPE))
        labels.append(np.full(len(images[-1]), label, np.int64))
    _check_image_count(directory, sum(map(len, images)))
    classes = tuple(f.stem.removeprefix("full_numpy_bitmap_") for f in files)
    return _split_per_class(images, labels, test_fraction, str(directory), classes)


# ---------------------------------------------------------------- image folders

def read_image_folder(path: str | os.PathLike, *, test_fraction: float = TEST_FRACTION) -> MnistData:
    """Image files in one folder per class, each converted as MNIST was made (`preprocess.load_image`):
    root/train/<class>/* and root/test/<class>/*, or root/<class>/* with `test_fraction` of each held out."""
    root = Path(path).expanduser()
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _class_files(root / "train"), _class_files(root / "test")
        stray = sorted(set(test) - set(train))
        if stray:
            raise MnistCnnError(f"{root / 'test' / stray[0]}: a class with no training folder in {root / 'train'}")
        classes = tuple(train)
        x_train, y_train = _read_images(train, classes)
        x_test, y_test = _read_images(test, classes)
        return MnistData(torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test),
                         torch.from_numpy(y_test), source=str(root), classes=classes)
    files = _class_files(root)
    classes = tuple(files)
    images, labels = zip(*(_read_images({c: files[c]}, classes) for c in classes))
    return _split_per_class(list(images), list(labels), test_fraction, str(root), classes)


def _class_files(root: Path) -> dict[str, list[Path]]:
    """{class folder's name: its image files}, both sorted by name."""
    folders = sorted(root / e for e in _entries(root) if (root / e).is_dir() and not e.startswith("."))
    _check_class_count(root, len(folders), "class folders")
    files = {f.name: sorted(p for p in f.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
             for f in folders}
    _check_image_count(root, sum(map(len, files.values())))
    empty = [name for name, found in files.items() if not found]
    if empty:
        raise MnistCnnError(f"{root / empty[0]}: no image files in this class folder "
                            f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def _read_images(files: dict[str, list[Path]], classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    paths = [(p, classes.index(name)) for name, found in files.items() for p in found]
    x = np.stack([load_image(p) for p, _ in paths]) if paths else np.empty((0, *IMAGE_SHAPE), np.uint8)
    return x, np.array([label for _, label in paths], np.int64)


# ---------------------------------------------------------------- shared steps

def _split_per_class(images: list[np.ndarray], labels: list[np.ndarray], test_fraction: float, source: str,
                     classes: tuple[str, ...]) -> MnistData:
    """Hold out the last `test_fraction` of each class (at least one image), then interleave the classes in a
    seeded order: validation splits take the last images, which would otherwise all be of the last class."""
    parts: dict[str, list[np.ndarray]] = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    for x, y in zip(images, labels):
        if len(x) < 2:
            raise MnistCnnError(f"{source}: class {classes[int(y[0])] if len(y) else '?'!r} has {len(x)} image(s); "
                                "each class needs two or more (some to train on, one to test)")
        cut = len(x) - max(1, round(len(x) * test_fraction))
        for key, value in (("x_train", x[:cut]), ("y_train", y[:cut]), ("x_test", x[cut:]), ("y_test", y[cut:])):
            parts[key].append(value)
    rng = np.random.default_rng(SPLIT_SEED)
    arrays = {}
    for split in ("train", "test"):
        x, y = np.concatenate(parts[f"x_{split}"]), np.concatenate(parts[f"y_{split}"])
        order = rng.permutation(len(x))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x[order], y[order]
    x_train, y_train, x_test, y_test = (torch.from_numpy(arrays[k]) for k in ("x_train", "y_train", "x_test", "y_test"))
    return MnistData(x_train, y_train, x_test, y_test, source=source, classes=classes)


def _numbered(arrays: dict[str, np.ndarray]) -> tuple[str, ...] | None:
    """Without a names file, the label range names the classes "0".."n-1" (None for the digits' ten or fewer)."""
    top = max((int(a.max()) for k, a in arrays.items() if k.startswith("y_") and a.size), default=0)
    return tuple(str(i) for i in range(top + 1)) if top >= 10 and top < MAX_CLASSES else None


def _entries(directory: Path) -> list[str]:
    try:
        return sorted(e.name for e in directory.iterdir())
    except FileNotFoundError:
        raise MnistCnnError(f"{directory}: no such directory") from None
    except OSError as e:
        raise MnistCnnError(f"{directory}: cannot list it ({e.strerror or e})") from None


def _existing(directory: Path, name: str, suffixes: Sequence[str]) -> Path:
    for suffix in suffixes:
        if (directory / f"{name}{suffix}").is_file():
            return directory / f"{name}{suffix}"
    raise MnistCnnError(f"{directory}: no {name}{suffixes[0]} file (found {_listing(_entries(directory))})")


def _table_text(path: Path) -> str:
    """A small text table (mapping, class map), read within MAX_TABLE_BYTES."""
    try:
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise MnistCnnError(f"{path}: {path.stat().st_size:,} bytes, more than the {MAX_TABLE_BYTES:,} a class "
                                "table may hold")
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise MnistCnnError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise MnistCnnError(f"{path}: cannot read ({e.strerror or e})") from None


def _check_class_count(where: Path, count: int, what: str) -> None:
    if not 2 <= count <= MAX_CLASSES:
        raise MnistCnnError(f"{where}: {count} {what}, expected 2 to {MAX_CLASSES:,} (one per class)")


def _check_image_count(where: Path, count: int) -> None:
    if count > MAX_IMAGES:
        raise MnistCnnError(f"{where}: {count:,} images, more than the {MAX_IMAGES:,} a data set may hold here")
