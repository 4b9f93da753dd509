"""Hostile inputs, second round (issue 23): no data loss, bounded memory from tiny files, one line instead of a
traceback. Each case is a row of docs/limits.md's "Bad input, second round" table (checked at the end); the budgets
it names are in that file too."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import mnist_cnn
from mnist_cnn.cli import main
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.models import build_model
from mnist_cnn.runs import FORMAT, _digest, checkpoint_paths, load_run, load_tensors, save_tensors
from mnist_cnn.training import make_config, train
from mnist_cnn.zoo import get_spec

DOC = Path(__file__).resolve().parents[1] / "docs" / "limits.md"
SRC = str(Path(mnist_cnn.__file__).resolve().parents[1])  # the subprocesses import the package these tests do


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist) -> Path:
    out = tmp_path_factory.mktemp("bad2") / "run"
    train(make_config(epochs=1, limit_train=256, limit_test=64, verbose=0, out=str(out)), mnist, log=lambda *_: None)
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


def one_line_error(capsys, argv: list[str], expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err, err


def raw_safetensors(path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> Path:
    """A safetensors file with exactly this string metadata and a valid checksum (what an editor can produce)."""
    from safetensors.torch import save
    meta = {"format": FORMAT, **meta}
    meta["sha256"] = _digest(tensors, meta)
    path.write_bytes(save(tensors, metadata=meta))
    return path


# ---------------------------------------------------------------- 1. data loss: folders that are not ours

@pytest.mark.parametrize("name", ["model.safetensors", "metrics.json", "history.csv"])
def test_train_refuses_a_users_folder_and_overwrites_nothing(tmp_path, capsys, name):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / name).write_bytes(b"the user's own file")
    one_line_error(capsys, ["train", "--limit-train", "64", "--epochs", "1", "--out", str(mine)],
                   "is not an mnist-cnn run folder")
    with pytest.raises(MnistCnnError, match="is not an mnist-cnn run folder"):  # overwrite removes runs, not these
        train(make_config(epochs=1, limit_train=64, verbose=0, out=str(mine)), overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == [name] and (mine / name).read_bytes() == b"the user's own file"


def test_a_second_training_into_a_locked_folder_gets_one_line(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".mnist-cnn-lock", "w") as held:  # what a running training holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        one_line_error(capsys, ["train", "--limit-train", "64", "--epochs", "1", "--out", str(out)],
                       "is in use by another mnist-cnn process")
    assert not (out / "config.json").exists()


def test_out_dev_null_is_not_a_folder(capsys):
    one_line_error(capsys, ["train", "--limit-train", "64", "--out", "/dev/null"],
                   "--out /dev/null is a device or other special file, not a folder")


def test_ensemble_refuses_a_users_folder(run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text("{}")
    one_line_error(capsys, ["ensemble", str(run), str(run), "--out", str(mine)], "is not an mnist-cnn ensemble folder")
    assert (mine / "metrics.json").read_text() == "{}"


# ---------------------------------------------------------------- 4. memory: budgets before allocating

def test_a_grid_is_counted_before_its_cells_are_built(tmp_path, capsys):
    axes = "\n".join(f"model_options.a{i} = [{', '.join(map(str, range(10)))}]" for i in range(4))
    grid = tmp_path / "grid.toml"
    grid.write_text(f'[base]\nmodel = "keras-basic"\n[axes]\n{axes}\nseed = [1, 2]\n')
    one_line_error(capsys, ["experiment", str(grid), "--out", str(tmp_path / "exp")],
                   "20,000 cells is over the limit of 10,000 cells (set MNIST_CNN_MAX_GRID_CELLS")


def test_a_tiny_weights_file_cannot_declare_a_large_model(tmp_path, capsys):
    spec = json.dumps(get_spec("keras-dropout").to_dict())
    path = raw_safetensors(tmp_path / "model.safetensors", {"spec": spec}, {"w": torch.zeros(1)})
    one_line_error(capsys, ["evaluate", str(path)], "its metadata's spec declare 872,714 weights, but the file holds 1")


def test_an_ensemble_file_cannot_declare_40_large_members(tmp_path, capsys):
    member = {"spec": get_spec("keras-dropout").to_dict(), "source": "x"}
    path = raw_safetensors(tmp_path / "ensemble.safetensors",
                           {"ensemble": json.dumps({"members": [member] * 40, "shifts": [[0, 0]]})},
                           {"w": torch.zeros(1)})
    one_line_error(capsys, ["evaluate", str(path)], "its metadata's specs declare 34,908,560 weights")


def test_a_gzipped_idx_is_refused_from_its_declared_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_CNN_MAX_DATA_BYTES", "1000000")
    path = tmp_path / "bomb-idx3-ubyte.gz"  # 2 MB of zeros in a few KB
    path.write_bytes(gzip.compress(struct.pack(">BBBBIII", 0, 0, 8, 3, 2551, 28, 28) + bytes(2551 * 784)))
    from mnist_cnn.idx import read_idx
    with pytest.raises(MnistCnnError, match=r"the header's shape \(2551, 28, 28\): 1,999,984 bytes is over the limit "
                                            r"of 1,000,000 bytes \(set MNIST_CNN_MAX_DATA_BYTES"):
        read_idx(path)


def test_a_spec_linked_to_dev_zero_is_refused_before_reading(tmp_path):
    link = tmp_path / "spec.json"
    link.symlink_to("/dev/zero")
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))\n"
            "from mnist_cnn.documents import read_document\n"
            f"try: read_document({str(link)!r}, 'spec')\n"
            "except Exception as e: print(type(e).__name__, e)")
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": SRC}).stdout
    assert said.startswith("MnistCnnError") and "not a regular file" in said, said


# ---------------------------------------------------------------- 5. one line, not a traceback

@pytest.mark.parametrize("key, value, message", [
    ("data", 5, "config.json: data must be a path, got 5"),
    ("limit_test", "x", "config.json: limit_test must be a positive integer, got 'x'"),
    ("limit_test", -5, "config.json: limit_test must be a positive integer, got -5"),
])
def test_config_json_read_back_with_wrong_types(run, tmp_path, capsys, key, value, message):
    copy = copy_run(run, tmp_path)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, key: value}))
    one_line_error(capsys, ["evaluate", str(copy)], message)


def test_an_npz_member_named_without_npy(tmp_path, capsys):
    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key in ("x_test", "y_test"):
            zf.writestr(key, b"not an npy member name")
    from mnist_cnn.data import load_mnist
    with pytest.raises(MnistCnnError, match="missing arrays x_test, y_test"):
        load_mnist(path, test_only=True)


def test_a_toml_date_in_a_grid(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text('[base]\nmodel = "keras-basic"\n[axes]\nepochs = [1979-05-27]\n')
    one_line_error(capsys, ["experiment", str(grid)], "holds a date (datetime.date(1979, 5, 27))")


@pytest.mark.parametrize("meta", ['{"not json', "[" * 100_000 + "]" * 100_000], ids=["not-json", "deep"])
def test_safetensors_metadata_that_is_not_json(tmp_path, capsys, meta):
    path = raw_safetensors(tmp_path / "model.safetensors", {"spec": meta}, {"w": torch.zeros(1)})
    one_line_error(capsys, ["evaluate", str(path)], "its metadata is not valid JSON")


def test_a_checkpoint_without_step(run, tmp_path, capsys):
    copy = copy_run(run, tmp_path)
    for path in checkpoint_paths(copy):
        tensors, meta = load_tensors(path)
        save_tensors(path, tensors, {k: v for k, v in meta.items() if k != "step"})
    one_line_error(capsys, ["train", "--resume", str(copy)], "is damaged; cannot resume")


def test_an_ensemble_member_without_spec(tmp_path, capsys):
    path = raw_safetensors(tmp_path / "ensemble.safetensors",
                           {"ensemble": json.dumps({"members": [{"source": "x"}], "shifts": [[0, 0]]})},
                           {"w": torch.zeros(1)})
    one_line_error(capsys, ["evaluate", str(path)], "ensemble member 0 in its metadata has no spec")


@pytest.mark.parametrize("command, rest", [("evaluate", []), ("report", []), ("explain", ["--index", "0"]),
                                           ("export", ["--out", "m.onnx"]), ("predict", ["one.png"])])
def test_a_path_component_over_255_bytes(tmp_path, capsys, command, rest):
    one_line_error(capsys, [command, str(tmp_path / ("a" * 300) / "run"), *rest], "a name in it is too long")


def test_a_non_utf8_file_name_prints_escaped(run, tmp_path):
    image = tmp_path / os.fsdecode(b"digit-\xff.png")
    from PIL import Image, ImageDraw
    im = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(im).line([(14, 4), (14, 24)], fill=255, width=3)
    im.save(image)
    done = subprocess.run([sys.executable, "-m", "mnist_cnn", "predict", str(run), str(image)], capture_output=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": SRC, "PYTHONIOENCODING": "utf-8:strict"})
    assert done.returncode == 0 and b"digit-\\udcff.png" in done.stdout, done.stderr[-500:]


# ---------------------------------------------------------------- 6. unclear messages, NaN

def test_a_pixel_just_above_one_is_shown_with_every_digit():
    from mnist_cnn.predict import predict_arrays
    images = np.full((1, 28, 28), 1.0000000000000002)
    with pytest.raises(MnistCnnError, match=r"got values in \[1\.0000000000000002, 1\.0000000000000002\] \(above 1\)"):
        predict_arrays(build_model(get_spec("keras-basic")), images)


def test_nan_weights_are_refused_naming_the_file_and_tensor(run, tmp_path, capsys):
    copy = copy_run(run, tmp_path)
    tensors, meta = load_tensors(copy / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = float("nan")
    save_tensors(copy / "model.safetensors", tensors, meta)
    one_line_error(capsys, ["evaluate", str(copy)], f"model.safetensors: tensor {name!r} holds NaN or infinite values")
    with pytest.raises(MnistCnnError, match="holds NaN"):
        load_run(copy)


def test_nan_outputs_are_an_error_not_null_probabilities():
    from mnist_cnn.predict import predict_arrays
    model = build_model(get_spec("keras-basic"))
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(MnistCnnError, match="gave NaN or infinite scores"):
        predict_arrays(model, np.zeros((1, 28, 28), np.uint8))


def test_every_case_here_is_a_row_of_the_docs_table():
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| `test_")]
    named = {line.split("`")[1] for line in rows}
    here = ({name for name in globals() if name.startswith("test_")}
            - {"test_every_case_here_is_a_row_of_the_docs_table"})
    assert named == here
