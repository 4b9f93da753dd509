"""IDX files, the format MNIST (and Fashion-MNIST, KMNIST, EMNIST) ships in: read and written with numpy alone.

An IDX file is untrusted: its header is never believed before the bytes behind it have been seen, a gzip is
counted before it is kept (a few MB may expand to GBs), and every problem is one line naming the file.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from .atomic import atomic_write_bytes
from .budgets import Budget, open_regular
from .errors import MnistCnnError

Stream = IO[bytes] | gzip.GzipFile  # what the readers read from: a file, or its gzip

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
# IDX type code -> big-endian numpy dtype (the IDX format is big-endian throughout).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(t).str[1:]: code for code, t in _IDX_DTYPES.items()}  # "u1" -> 0x08, ...
_MAX_DIMS = 32  # numpy's limit on array dimensions (older releases)

#: decompressed bytes of one array (IDX file or .npy member), from its header before reading: EMNIST ByClass's
#: 697,932 training images are 547 MB
DATA_BYTES = Budget("MNIST_CNN_MAX_DATA_BYTES", 2 * 2**30)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped or not (told apart by the magic bytes, not the name)."""
    path = Path(path)
    compressed = False
    try:
        with open_regular(path, "IDX") as f:
            compressed = f.read(2) == _GZIP_MAGIC
            f.seek(0)
            if not compressed:
                return _parse_idx(f, path, os.fstat(f.fileno()).st_size)
            with gzip.GzipFile(fileobj=f) as g:
                return _parse_idx(g, path, None)
    except FileNotFoundError:
        raise MnistCnnError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MnistCnnError(f"{path}: is a directory, expected an IDX file") from None
    except (OSError, EOFError, zlib.error) as e:
        problem = "corrupt gzip data" if compressed else "cannot read"
        raise MnistCnnError(f"{path}: {problem} ({e})") from None


def _parse_idx(stream: Stream, path: Path, file_size: int | None) -> np.ndarray:
    """Parse header then body; `file_size` (plain files only) lets a lying header fail at once."""
    head = stream.read(4)
    if len(head) < 4 or head[:2] != b"\0\0":
        raise MnistCnnError(f"{path}: not an IDX file (starts with {head.hex() or 'nothing'}, "
                            "expected 0000 then a type code and a dimension count)")
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        raise MnistCnnError(f"{path}: unknown IDX type code 0x{code:02x} "
                            f"(known: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})")
    if not 1 <= ndim <= _MAX_DIMS:
        raise MnistCnnError(f"{path}: IDX header declares {ndim} dimensions, expected 1 to {_MAX_DIMS}")
    raw_dims = stream.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise MnistCnnError(f"{path}: truncated: the file ends inside its IDX header")
    shape = struct.unpack(f">{ndim}I", raw_dims)
    dtype = np.dtype(_IDX_DTYPES[code])
    nbytes = math.prod(shape) * dtype.itemsize
    if file_size is not None and nbytes > file_size - 4 - 4 * ndim:
        # Refuse before reading anything: a 100-byte file cannot hold 10^9 images.
        raise _truncated(path, shape, nbytes, file_size - 4 - 4 * ndim)
    if nbytes > DATA_BYTES.value:  # a gzip of a few MB may expand to GBs: count (never keep) what is really there
        held = _count_at_most(stream, DATA_BYTES.value + 1)
        if held < nbytes and held <= DATA_BYTES.value:
            raise _truncated(path, shape, nbytes, held)
        DATA_BYTES.check(nbytes, f"{path}: the header's shape {shape}")
    body = read_at_most(stream, nbytes + 1)
    if len(body) < nbytes:
        raise _truncated(path, shape, nbytes, len(body))
    if len(body) > nbytes:
        raise MnistCnnError(f"{path}: unexpected bytes after the {nbytes:,} bytes of data "
                            f"that the header's shape {shape} declares")
    try:  # numpy refuses shapes like (0, 2**32-1, 2**32-1, 2**32-1) even with no data
        return np.frombuffer(body, dtype=dtype).astype(dtype.newbyteorder("="), copy=False).reshape(shape)
    except ValueError as e:
        raise MnistCnnError(f"{path}: cannot make an array of the header's shape {shape} ({e})") from None


def _truncated(path: Path | str, shape: tuple[int, ...], nbytes: int, held: int) -> MnistCnnError:
    return MnistCnnError(f"{path}: truncated: the header declares shape {shape} ({nbytes:,} bytes "
                         f"of data) but the file holds only {held:,}")


def read_at_most(stream: Stream, limit: int) -> bytearray:
    """Read until EOF or `limit` bytes in chunks, so memory follows the bytes really there."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = stream.read(min(_CHUNK, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _count_at_most(stream: Stream, limit: int) -> int:
    """How many bytes the stream holds, up to `limit`, read in chunks and dropped: memory stays one chunk."""
    held = 0
    while held < limit and (chunk := stream.read(min(_CHUNK, limit - held))):
        held += len(chunk)
    return held


def idx_bytes(array: np.ndarray) -> bytes:
    """The uncompressed IDX encoding of `array` (what the canonical checksums are taken over)."""
    arr = np.asarray(array)
    code = _IDX_CODES.get(arr.dtype.str[1:])
    if code is None:
        raise MnistCnnError(f"cannot store dtype {arr.dtype} as IDX "
                            f"(IDX holds {', '.join(np.dtype(t).name for t in _IDX_DTYPES.values())})")
    if not 1 <= arr.ndim <= 255 or max(arr.shape) >= 2**32:
        raise MnistCnnError(f"cannot store shape {arr.shape} as IDX (1 to 255 dimensions, each < 2**32)")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">"), copy=False).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write `array` as IDX, atomically; gzipped if `path` ends in .gz (deterministic: mtime 0, no name)."""
    path = Path(path)
    content = idx_bytes(array)
    if path.name.endswith(".gz"):
        content = gzip.compress(content, compresslevel=9, mtime=0)
    return atomic_write_bytes(path, content)
