"""The data layer: bundled MNIST, IDX/npz files, directories of IDX files, splits, and clear errors."""

from __future__ import annotations

import gzip
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_cnn import data
from mnist_cnn.data import (
    CANONICAL,
    IDX_NAMES,
    TEST_KEYS,
    MnistData,
    bundled_mnist_dir,
    download_mnist,
    load_mnist,
    read_npz,
    split_validation,
    verify_bundled,
    write_npz,
)
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.idx import read_idx, write_idx
from mnist_cnn.inputs import to_float


def small_set(n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny MNIST-format set: uint8 images [N, 28, 28] and uint8 labels 0..9."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_idx_dir(directory: Path, arrays: dict[str, np.ndarray], suffix: str = ".gz") -> Path:
    for key, name in IDX_NAMES.items():
        write_idx(directory / f"{name}{suffix}", arrays[key])
    return directory


def assert_same(loaded: MnistData, arrays: dict[str, np.ndarray]) -> None:
    for key in IDX_NAMES:
        np.testing.assert_array_equal(getattr(loaded, key).numpy(), arrays[key])


# ---------------------------------------------------------------- the bundled copy
# (`mnist` is the session fixture in conftest.py: load_mnist() with no path)

def test_bundled_mnist_loads_offline_with_the_known_facts(mnist):
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_train.dtype == torch.uint8
    assert mnist.y_train.shape == (60000,) and mnist.y_train.dtype == torch.int64
    assert mnist.x_test.shape == (10000, 28, 28) and mnist.y_test.shape == (10000,)
    assert len(mnist) == 60000 and mnist.num_classes == 10 and mnist.source == "bundled"
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.y_train.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.y_test.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    pixels = to_float(mnist.x_train)  # scaled by 1/255, as the models see them
    assert round(pixels.mean().item(), 4) == 0.1307
    assert round(pixels.std().item(), 4) == 0.3081


def test_bundled_files_are_the_four_canonical_gz_files_and_verify():
    directory = bundled_mnist_dir()
    for name in CANONICAL:
        assert (directory / f"{name}.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert "CC BY-SA 3.0" in (directory / "README.md").read_text()
    verify_bundled()  # raises on any mismatch


def test_a_tampered_bundled_copy_fails_its_checksum(tmp_path, monkeypatch):
    write_idx_dir(tmp_path, small_set())
    monkeypatch.setattr(data, "bundled_mnist_dir", lambda: tmp_path)
    with pytest.raises(MnistCnnError, match=r"train-images-idx3-ubyte\.gz: checksum mismatch"):
        load_mnist()
    with pytest.raises(MnistCnnError, match="checksum mismatch"):
        verify_bundled()
    assert len(load_mnist(verify=False)) == 12  # the check can be skipped


# ---------------------------------------------------------------- IDX files

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    np.array([5, 0, 4], dtype=np.uint8),
    np.array([-3, 7], dtype=np.int8),
    np.array([[-300, 2], [3, 30000]], dtype=np.int16),
    np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    np.array([[0.5, -1.25]], dtype=np.float32),
    np.array([np.pi], dtype=np.float64),
    np.zeros((0, 28, 28), dtype=np.uint8),
], ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_idx_round_trip(tmp_path, suffix, array):
    path = write_idx(tmp_path / f"a.idx{suffix}", array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_gzipped_idx_is_deterministic_with_no_name_and_no_time(tmp_path):
    array = np.arange(100, dtype=np.uint8)
    first = write_idx(tmp_path / "one.gz", array).read_bytes()
    assert write_idx(tmp_path / "two.gz", array).read_bytes() == first
    assert first[3] == 0  # FLG: no file name, no comment, no extra field
    assert first[4:8] == b"\0\0\0\0"  # MTIME


def test_read_idx_tells_gzip_by_magic_bytes_not_by_name(tmp_path):
    array = np.arange(6, dtype=np.uint8)
    gz = write_idx(tmp_path / "a.gz", array)
    plain = write_idx(tmp_path / "b", array)
    np.testing.assert_array_equal(read_idx(gz.rename(tmp_path / "looks-plain")), array)
    np.testing.assert_array_equal(read_idx(plain.rename(tmp_path / "looks.gz")), array)


def test_write_idx_refuses_what_idx_cannot_hold(tmp_path):
    with pytest.raises(MnistCnnError, match="cannot store dtype int64 as IDX"):
        write_idx(tmp_path / "a", np.zeros(3, dtype=np.int64))
    with pytest.raises(MnistCnnError, match=r"cannot store shape \(\) as IDX"):
        write_idx(tmp_path / "a", np.uint8(3))


# ---------------------------------------------------------------- npz files

def test_npz_round_trip_in_the_keras_layout(tmp_path):
    arrays = small_set()
    original = load_mnist(write_idx_dir(tmp_path / "idx", arrays))
    path = write_npz(tmp_path / "mnist.npz", original)
    with np.load(path, allow_pickle=False) as npz:  # what Keras' mnist.load_data() reads
        assert sorted(npz.files) == ["x_test", "x_train", "y_test", "y_train"]
        assert npz["x_train"].dtype == np.uint8 and npz["y_train"].dtype == np.uint8
    for loaded in (read_npz(path), load_mnist(path)):
        assert_same(loaded, arrays)
        assert loaded.y_train.dtype == torch.int64 and loaded.source == str(path)


def test_npz_written_by_numpy_loads(tmp_path):
    arrays = small_set()
    np.savez(tmp_path / "plain.npz", **arrays)
    assert_same(load_mnist(tmp_path / "plain.npz"), arrays)


def test_npz_as_a_keras_tutorial_leaves_it_loads_as_the_same_bytes(tmp_path):
    # x / 255 as float32 with a channel axis, labels from to_categorical: the pixels are still the bytes
    arrays = small_set()
    one_hot = {k: np.eye(10, dtype=np.float32)[v] for k, v in arrays.items() if k[0] == "y"}
    for images in ({k: (v / 255.0).astype(np.float32)[..., None] for k, v in arrays.items() if k[0] == "x"},
                   {k: v[:, None].astype(np.int64) for k, v in arrays.items() if k[0] == "x"}):
        np.savez(tmp_path / "tutorial.npz", **images, **one_hot)
        assert_same(load_mnist(tmp_path / "tutorial.npz"), arrays)

    standardised = (arrays["x_train"] / 255.0 - 0.1307) / 0.3081  # not pixels any more: refused, not guessed at
    np.savez(tmp_path / "std.npz", **{**arrays, "x_train": standardised})
    with pytest.raises(MnistCnnError, match=r"std\.npz\[x_train\]: images of dtype float64 with values in "
                                            r"\[-0\.42.*are not pixels 0\.\.255 .*store the original uint8"):
        load_mnist(tmp_path / "std.npz")
    np.savez(tmp_path / "soft.npz", **{**arrays, "y_test": np.full((5, 10), 0.1)})
    with pytest.raises(MnistCnnError, match=r"soft\.npz\[y_test\]: labels have shape \(5, 10\) and dtype float64, "
                                            r"expected one integer per image \(or one-hot rows of 10\)"):
        load_mnist(tmp_path / "soft.npz")


# ---------------------------------------------------------------- directories of IDX files

def kaggle_name(name: str) -> str:
    return name.replace("-idx", ".idx")


@pytest.mark.parametrize("layout", ["plain", "gz", "kaggle", "kaggle-nested"])
def test_directory_of_idx_files_loads_under_the_usual_names(tmp_path, layout):
    arrays = small_set()
    for key, name in IDX_NAMES.items():
        path = {
            "plain": tmp_path / name,
            "gz": tmp_path / f"{name}.gz",
            "kaggle": tmp_path / kaggle_name(name),
            "kaggle-nested": tmp_path / kaggle_name(name) / kaggle_name(name),
        }[layout]
        write_idx(path, arrays[key])
    loaded = load_mnist(tmp_path)
    assert_same(loaded, arrays)
    assert loaded.source == str(tmp_path) and len(loaded) == 12


def test_directory_loading_serves_any_mnist_format_set(tmp_path):
    # Fashion-MNIST and KMNIST ship under the same file names; only the content differs.
    arrays = small_set(seed=7)
    assert_same(load_mnist(write_idx_dir(tmp_path, arrays, suffix="")), arrays)


def test_load_mnist_accepts_a_str_path(tmp_path):
    arrays = small_set()
    assert_same(load_mnist(str(write_idx_dir(tmp_path, arrays))), arrays)


# ---------------------------------------------------------------- downloads (offline: file:// mirrors)

def test_download_mnist_takes_the_first_mirror_with_canonical_content(tmp_path):
    bad, good = tmp_path / "bad", tmp_path / "good"
    write_idx_dir(bad, small_set())  # right names, wrong content
    shutil.copytree(bundled_mnist_dir(), good)
    mirrors = [bad.as_uri(), (tmp_path / "nothing").as_uri(), good.as_uri()]
    dest = download_mnist(tmp_path / "dest", mirrors=mirrors)
    for name in CANONICAL:
        assert (dest / f"{name}.gz").read_bytes() == (good / f"{name}.gz").read_bytes()


def test_download_mnist_without_any_reachable_mirror_says_so(tmp_path):
    with pytest.raises(MnistCnnError, match=r"could not download train-images-idx3-ubyte\.gz .*nowhere.*load_mnist"):
        download_mnist(tmp_path / "dest", mirrors=[(tmp_path / "nowhere").as_uri()])


# ---------------------------------------------------------------- validation splits

def test_validation_split_takes_the_last_fraction_like_keras():
    x, y = torch.arange(60000), torch.arange(60000)
    x_tr, y_tr, x_val, y_val = split_validation(x, y, validation_split=0.1)
    assert (len(x_tr), len(x_val)) == (54000, 6000)
    assert torch.equal(x_val, x[-6000:]) and torch.equal(y_tr, y[:54000])


def test_val_size_takes_the_last_examples():
    x, y = torch.arange(60000), torch.arange(60000)
    x_tr, y_tr, x_val, y_val = split_validation(x, y, val_size=5000)
    assert (len(x_tr), len(x_val)) == (55000, 5000)
    assert x_val[0] == 55000 and torch.equal(y_val, y[55000:])


def test_no_split_gives_an_empty_validation_set(mnist):
    x_tr, y_tr, x_val, y_val = split_validation(mnist.x_train, mnist.y_train)
    assert len(x_tr) == 60000 and x_val.shape == (0, 28, 28) and y_val.shape == (0,)
    assert len(split_validation(mnist.x_train, mnist.y_train, validation_split=0.0)[2]) == 0
    assert len(split_validation(mnist.x_train, mnist.y_train, val_size=0)[2]) == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(validation_split=1.0), r"validation_split=1\.0: expected a fraction in \[0, 1\)"),
    (dict(validation_split=-0.1), r"validation_split=-0\.1"),
    (dict(validation_split=float("nan")), r"validation_split=nan"),
    (dict(validation_split="0.1"), r"validation_split='0\.1'"),
    (dict(validation_split=True), r"validation_split=True"),
    (dict(validation_split=0.95), r"validation_split=0\.95 leaves 0 of 10 examples for training"),
    (dict(validation_split=1e-20), r"validation_split=1e-20 leaves 10 of 10"),
    (dict(val_size=10), r"val_size=10: expected a whole number from 0 to 9"),
    (dict(val_size=-1), r"val_size=-1"),
    (dict(val_size=2.5), r"val_size=2\.5"),
    (dict(validation_split=0.1, val_size=1), "not both"),
])
def test_invalid_splits_name_the_value(kwargs, message):
    with pytest.raises(MnistCnnError, match=message):
        split_validation(torch.zeros(10, 28, 28), torch.zeros(10), **kwargs)


def test_split_needs_as_many_labels_as_images():
    with pytest.raises(MnistCnnError, match="9 labels for 10 images"):
        split_validation(torch.zeros(10, 28, 28), torch.zeros(9), val_size=1)


# ---------------------------------------------------------------- bad files: one clear line each

def header(code: int, *dims: int) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def gz(content: bytes) -> bytes:
    return gzip.compress(content, mtime=0)


CORRUPT_GZ = bytearray(gz(header(0x08, 1000) + bytes(range(256)) * 4))
CORRUPT_GZ[15:20] = b"\xff\xff\xff\xff\xff"


@pytest.mark.parametrize("content, message", [
    (b"", r"not an IDX file \(starts with nothing"),
    (b"PK\x03\x04 a zip file", r"not an IDX file \(starts with 504b0304"),
    (header(0x07, 3) + b"abc", r"unknown IDX type code 0x07"),
    (bytes([0, 0, 8, 0]), r"declares 0 dimensions, expected 1 to 32"),
    (bytes([0, 0, 8, 3, 0, 0]), r"truncated: the file ends inside its IDX header"),
    (header(0x08, 10, 28, 28) + bytes(100), r"truncated: the header declares shape \(10, 28, 28\) "
                                            r"\(7,840 bytes of data\) but the file holds only 100"),
    (header(0x08, 3) + b"abcd", r"unexpected bytes after the 3 bytes of data"),
    (header(0x08, 0, 2**32 - 1, 2**32 - 1, 2**32 - 1), r"cannot make an array of the header's shape \(0, 42949"),
    (gz(header(0x08, 10, 28, 28) + bytes(100)), r"truncated: .* but the file holds only 100"),
    (gz(header(0x08, 3) + b"abcd"), r"unexpected bytes after the 3 bytes of data"),
    (gz(header(0x08, 3) + b"abc")[:-6], r"corrupt gzip data"),
    (bytes(CORRUPT_GZ), r"corrupt gzip data"),
    (b"\x1f\x8b not gzip at all", r"corrupt gzip data"),
], ids=["empty", "wrong-magic", "type-code", "no-dims", "short-header", "truncated", "trailing",
        "zero-by-huge", "gz-truncated", "gz-trailing", "gz-cut", "gz-corrupt", "gz-bad-header"])
def test_bad_idx_files_get_a_specific_one_line_error(tmp_path, content, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(MnistCnnError, match=message) as error:
        read_idx(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_a_header_claiming_a_billion_images_is_refused_before_allocating(tmp_path, compress):
    content = header(0x08, 10**9, 28, 28) + bytes(84)
    path = tmp_path / "huge"
    path.write_bytes(gz(content) if compress else content)
    tracemalloc.start()
    try:
        with pytest.raises(MnistCnnError, match=r"truncated: the header declares shape \(1000000000, 28, 28\) "
                                                r"\(784,000,000,000 bytes of data\)"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20  # nothing near the 784 GB the header asks for


def test_missing_files_and_folders_say_what_was_looked_for(tmp_path):
    with pytest.raises(MnistCnnError, match=r"nothing-here: no such file or directory"):
        load_mnist(tmp_path / "nothing-here")
    with pytest.raises(MnistCnnError, match=r"absent\.idx: no such file"):
        read_idx(tmp_path / "absent.idx")
    with pytest.raises(MnistCnnError, match=r"is a directory, expected an IDX file"):
        read_idx(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", small_set()["x_train"])
    looked_for = (r"no train-labels-idx1-ubyte file \(looked for train-labels-idx1-ubyte, "
                  r"train-labels-idx1-ubyte\.gz, train-labels\.idx1-ubyte, train-labels\.idx1-ubyte\.gz; "
                  r"found train-images-idx3-ubyte\.gz\)")  # what is there tells a misnamed file at once
    with pytest.raises(MnistCnnError, match=looked_for):
        load_mnist(tmp_path)
    for i in range(10):
        (tmp_path / f"emnist-digits-{i}.bin").touch()
    with pytest.raises(MnistCnnError, match=r"found emnist-digits-0\.bin, .*emnist-digits-7\.bin and 3 more\)"):
        load_mnist(tmp_path)


def test_data_built_by_hand_is_checked_like_a_file_and_names_the_field(mnist):
    x, y = mnist.x_train[:50], mnist.y_train[:50]
    tutorial = MnistData(x.numpy()[..., None] / 255.0, np.eye(10)[y.numpy()], x.numpy(), y.numpy().astype(np.uint8),
                         source="arrays")  # numpy, a channel axis, pixels / 255, one-hot labels: the same bytes
    for key in IDX_NAMES:
        assert torch.equal(getattr(tutorial, key), x if key[0] == "x" else y), key
    assert tutorial.x_train.dtype == torch.uint8 and tutorial.y_train.dtype == torch.int64
    assert MnistData(x, y, x, y, source="t").x_train.data_ptr() == x.data_ptr()  # tensors as they are: no copy
    for change, message in [(dict(y_train=y.float() + 0.5), r"MnistData\.y_train: labels have shape \(50,\) and "
                                                           r"dtype float32, expected one integer per image"),
                            (dict(y_train=y + 1), r"MnistData\.y_train: label 10 out of range 0\.\.9"),
                            (dict(x_test=x[:, :, :27]), r"MnistData\.x_test: images have shape \(50, 28, 27\)"),
                            (dict(y_test=y[:5]), r"MnistData\.y_test: 5 labels for the 50 images in MnistData\.x_test"),
                            (dict(x_test=x[:0], y_test=y[:0]), r"MnistData\.x_test: holds no images")]:
        with pytest.raises(MnistCnnError, match=message):
            MnistData(**{"x_train": x, "y_train": y, "x_test": x, "y_test": y, **change}, source="bad")
    assert len(MnistData(x[:0], y[:0], x, y, source="test set alone")) == 0


def test_a_test_set_alone_loads_for_evaluating_and_is_refused_for_training(tmp_path, mnist):
    arrays = small_set()
    for key in TEST_KEYS:
        write_idx(tmp_path / "t10k" / f"{IDX_NAMES[key]}.gz", arrays[key])
    np.savez(tmp_path / "test.npz", x_test=arrays["x_test"], y_test=arrays["y_test"])
    for path in (tmp_path / "t10k", tmp_path / "test.npz"):
        loaded = load_mnist(path, test_only=True)
        np.testing.assert_array_equal(loaded.x_test.numpy(), arrays["x_test"])
        np.testing.assert_array_equal(loaded.y_test.numpy(), arrays["y_test"])
        assert loaded.x_train.shape == (0, 28, 28) and len(loaded) == 0
    with pytest.raises(MnistCnnError, match=r"t10k: no train-images-idx3-ubyte file .*; found t10k-images"):
        load_mnist(tmp_path / "t10k")
    with pytest.raises(MnistCnnError, match=r"test\.npz: missing arrays x_train, y_train .*holds x_test, y_test"):
        load_mnist(tmp_path / "test.npz")
    bundled = load_mnist(test_only=True)  # the test files alone, still checksum-verified
    assert torch.equal(bundled.x_test, mnist.x_test) and torch.equal(bundled.y_test, mnist.y_test)

    from mnist_cnn.training import make_config, train

    with pytest.raises(MnistCnnError, match=r"test\.npz: holds no training images \(a test set alone can evaluate"):
        train(make_config(epochs=1, out=str(tmp_path / "run"), verbose=0), load_mnist(tmp_path / "test.npz",
                                                                                      test_only=True))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, culprit, message", [
    pytest.param(dict(y_train=np.zeros(11, np.uint8)), "train-labels",
                 r"11 labels for the 12 images in .*(train-images|x_train)", id="count-mismatch"),
    pytest.param(dict(y_test=np.full(5, 10, np.uint8)), "t10k-labels",
                 r"label 10 out of range 0\.\.9", id="label-10"),
    pytest.param(dict(y_test=np.full(5, -1, np.int8)), "t10k-labels",
                 r"label -1 out of range 0\.\.9", id="label-negative"),
    pytest.param(dict(x_train=np.zeros((12, 32, 32), np.uint8)), "train-images",
                 r"images have shape \(12, 32, 32\), expected \(N, 28, 28\)", id="32x32"),
    pytest.param(dict(x_test=np.zeros((5, 784), np.uint8)), "t10k-images",
                 r"images have shape \(5, 784\)", id="flat-images"),
    pytest.param(dict(x_train=np.full((12, 28, 28), 0.5, np.float32)), "train-images",
                 r"images of dtype float32 with values in \[0\.5, 0\.5\] are not pixels", id="float-images"),
    pytest.param(dict(y_train=np.zeros((12, 2), np.uint8)), "train-labels",
                 r"labels have shape \(12, 2\)", id="2d-labels"),
    pytest.param(dict(y_train=np.full(12, 0.5, np.float32)), "train-labels",
                 r"labels have shape \(12,\) and dtype float32, expected one integer per image", id="float-labels"),
    pytest.param(dict(x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0, np.uint8)), "t10k-images",
                 "holds no images", id="empty"),
])
def test_a_set_that_is_not_mnist_shaped_names_the_file_at_fault(tmp_path, change, culprit, message):
    arrays = {**small_set(), **change}
    with pytest.raises(MnistCnnError, match=rf"{culprit}-idx\d-ubyte\.gz: {message}"):
        load_mnist(write_idx_dir(tmp_path / "idx", arrays))
    np.savez(tmp_path / "set.npz", **arrays)
    key = next(k for k, name in IDX_NAMES.items() if name.startswith(culprit))
    with pytest.raises(MnistCnnError, match=rf"set\.npz\[{key}\]: {message}"):
        load_mnist(tmp_path / "set.npz")


def test_bad_npz_files_get_a_specific_error(tmp_path):
    arrays = small_set()
    np.savez(tmp_path / "partial.npz", x_train=arrays["x_train"], y_train=arrays["y_train"])
    with pytest.raises(MnistCnnError, match=r"partial\.npz: missing arrays x_test, y_test"):
        read_npz(tmp_path / "partial.npz")

    np.savez(tmp_path / "objects.npz", **{**arrays, "y_train": np.array([None] * 12, dtype=object)})
    with pytest.raises(MnistCnnError, match=r"objects\.npz\[y_train\]: holds Python objects .*refusing"):
        read_npz(tmp_path / "objects.npz")

    (tmp_path / "text.npz").write_text("not a zip file")
    with pytest.raises(MnistCnnError, match=r"text\.npz: not a readable \.npz file \(BadZipFile"):
        read_npz(tmp_path / "text.npz")

    whole = (tmp_path / "whole.npz")
    np.savez(whole, **arrays)
    (tmp_path / "cut.npz").write_bytes(whole.read_bytes()[:-200])
    with pytest.raises(MnistCnnError, match=r"cut\.npz: not a readable \.npz file"):
        read_npz(tmp_path / "cut.npz")

    with pytest.raises(MnistCnnError, match=r"absent\.npz: no such file"):
        read_npz(tmp_path / "absent.npz")
