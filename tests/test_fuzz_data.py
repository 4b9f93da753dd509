"""Property tests: whatever bytes a file holds, the readers either load it or raise MnistCnnError."""

from __future__ import annotations

import gzip
import io
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_cnn.data import IDX_NAMES, read_npz
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.idx import read_idx, write_idx

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
IDX_TYPE_CODES = [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]
ITEM_SIZES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def load_or_refuse(reader, path):
    """Run `reader`; an MnistCnnError is a fine answer, any other exception fails the test."""
    try:
        return reader(path)
    except MnistCnnError as error:
        assert "\n" not in str(error)
        return None


@FUZZ
@given(content=st.binary(max_size=300), compress=st.booleans())
def test_arbitrary_bytes_as_idx_load_or_raise_mnist_cnn_error(scratch, content, compress):
    path = scratch / "any.idx"
    path.write_bytes(gzip.compress(content, mtime=0) if compress else content)
    load_or_refuse(read_idx, path)


@FUZZ
@given(
    code=st.one_of(st.sampled_from(IDX_TYPE_CODES), st.integers(0, 255)),
    dims=st.lists(st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)), max_size=5),
    body=st.binary(max_size=200),
    compress=st.booleans(),
)
def test_headers_with_random_sizes_load_exactly_or_raise(scratch, code, dims, body, compress):
    content = bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + body
    path = scratch / "header.idx"
    path.write_bytes(gzip.compress(content, mtime=0) if compress else content)
    array = load_or_refuse(read_idx, path)
    if array is not None:  # it loaded: then the header was telling the truth
        assert array.shape == tuple(dims)
        assert array.size * ITEM_SIZES[code] == len(body)


@settings(FUZZ, max_examples=100)  # each example writes and fsyncs a level-9 gzip
@given(array=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]).flatmap(
    lambda dtype: st.lists(st.integers(0, 4), min_size=1, max_size=3).map(
        lambda shape: np.random.default_rng(sum(shape)).normal(0, 100, shape).astype(dtype))),
    compress=st.booleans(), cut=st.integers(0, 40))
def test_written_idx_files_read_back_and_cut_copies_are_refused(scratch, array, compress, cut):
    path = write_idx(scratch / ("ok.idx.gz" if compress else "ok.idx"), array)
    np.testing.assert_array_equal(read_idx(path), array)
    if cut:
        path.write_bytes(path.read_bytes()[:-cut])
        with pytest.raises(MnistCnnError):
            read_idx(path)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_a_billion_image_header_in_a_small_file_is_refused_without_allocating(scratch, compress):
    content = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (10**9, 28, 28)) + bytes(84)
    path = scratch / "huge.idx"
    path.write_bytes(gzip.compress(content, mtime=0) if compress else content)
    tracemalloc.start()
    try:
        with pytest.raises(MnistCnnError, match="truncated"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20  # the header asked for 784 GB


def npz_bytes(save, arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    save(buf, **arrays)
    return buf.getvalue()


SMALL_SET = {
    "x_train": np.zeros((3, 28, 28), np.uint8), "y_train": np.array([0, 1, 9], np.uint8),
    "x_test": np.zeros((1, 28, 28), np.uint8), "y_test": np.array([5], np.uint8),
}
VALID_NPZ = npz_bytes(np.savez, SMALL_SET)
VALID_NPZ_COMPRESSED = npz_bytes(np.savez_compressed, SMALL_SET)


def overwritten(valid: bytes) -> st.SearchStrategy[bytes]:
    """A valid archive with a few bytes overwritten somewhere."""
    return st.tuples(st.integers(0, len(valid) - 1), st.binary(min_size=1, max_size=8)).map(
        lambda at: valid[:at[0]] + at[1] + valid[at[0] + len(at[1]):])


@FUZZ
@given(content=st.one_of(st.binary(max_size=400), overwritten(VALID_NPZ), overwritten(VALID_NPZ_COMPRESSED)))
def test_arbitrary_bytes_as_npz_load_or_raise_mnist_cnn_error(scratch, content):
    path = scratch / "any.npz"
    path.write_bytes(content)
    load_or_refuse(read_npz, path)


@FUZZ
@given(shape=st.lists(st.integers(0, 2**40), min_size=1, max_size=3), key=st.sampled_from(list(IDX_NAMES)))
def test_npz_members_with_lying_headers_are_refused_without_allocating(scratch, shape, key):
    # A real .npy header claiming `shape`, followed by only 10 bytes of data.
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    path = scratch / "lying.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for name in IDX_NAMES:
            zf.writestr(f"{name}.npy", npy.getvalue() + bytes(10) if name == key else npz_member(name))
    tracemalloc.start()
    try:
        load_or_refuse(read_npz, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


def npz_member(name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(VALID_NPZ)) as zf:
        return zf.read(f"{name}.npy")
