"""Every row of docs/errors.md's "Bad input, and what it gets" table, checked: a user's mistake on the command line
gets ONE line `error: ...` naming the file or value and exit status 2 (never a traceback); a bad HTTP body gets
its 4xx JSON error. A test below parses that table, so the table and these cases cannot drift apart.

Readers already fuzzed elsewhere (tests/test_fuzz_data.py, tests/test_fuzz_spec.py, tests/test_preprocess.py,
tests/test_serve.py) are checked here once more through the whole CLI path, with tiny files in tmp_path.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from images import encode as png
from images import png_bomb as bomb_png
from PIL import Image, ImageDraw

from mnist_cnn.cli import main
from mnist_cnn.data import IDX_NAMES
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.idx import write_idx
from mnist_cnn.runs import checkpoint_paths
from mnist_cnn.training import make_config, train

TABLE = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
SECTION = "# Bad input, and what it gets"
MARKER = "mnist_cnn_unpickled_me"  # a pickle that runs code would create this file


# ---------------------------------------------------------------- fixtures and tiny files

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist) -> Path:
    out = tmp_path_factory.mktemp("bad-inputs") / "run"
    train(make_config(epochs=1, limit_train=300, limit_test=100, verbose=0, out=str(out)), mnist, log=lambda *_: None)
    return out


def digit_png() -> bytes:
    im = Image.new("L", (60, 60), 235)
    ImageDraw.Draw(im).line([(30, 8), (28, 52)], fill=20, width=6)
    return png(im)


SMALL = {"x_train": np.zeros((5, 28, 28), np.uint8), "y_train": np.array([0, 1, 2, 3, 4], np.uint8),
         "x_test": np.zeros((3, 28, 28), np.uint8), "y_test": np.array([5, 6, 7], np.uint8)}


class Malicious:
    """Unpickling this creates a file: what a booby-trapped model.pt would do (with worse code)."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


class Ctx:
    """What a case needs: the trained run, a scratch folder, and helpers that make bad files in it."""

    def __init__(self, run: Path, tmp: Path) -> None:
        self.run, self.tmp = run, tmp
        self.sockets: list[socket.socket] = []

    def file(self, name: str, content: bytes | str) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def spec(self, layers: list[dict], name: str = "net.json", **top: Any) -> str:
        return self.file(name, json.dumps({"layers": layers, **top}))

    def idx_dir(self, change: Callable[[Path], None] | None = None, **arrays: np.ndarray) -> str:
        folder = self.tmp / "idx"
        for key, name in IDX_NAMES.items():
            write_idx(folder / name, arrays.get(key, SMALL[key]))
        if change:
            change(folder)
        return str(folder)

    def npz(self, **arrays: np.ndarray) -> str:
        np.savez(self.tmp / "set.npz", **arrays)
        return str(self.tmp / "set.npz")

    def run_copy(self, change: Callable[[Path], None]) -> str:
        copy = self.tmp / "run-copy"
        shutil.copytree(self.run, copy)
        change(copy)
        return str(copy)

    def taken_port(self) -> str:
        s = socket.create_server(("127.0.0.1", 0))
        self.sockets.append(s)
        return str(s.getsockname()[1])


def replace(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(content)


def cut(name: str, n: int) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:-n])


def gzip_corrupt(folder: Path) -> None:
    name = IDX_NAMES["x_test"]
    data = bytearray(gzip.compress((folder / name).read_bytes(), mtime=0))
    data[30:60] = bytes(30)  # inside the deflate stream
    (folder / name).unlink()
    (folder / f"{name}.gz").write_bytes(bytes(data))


def json_edit(name: str, edit: Callable[[Any], Any]) -> Callable[[Path], None]:
    def change(run: Path) -> None:
        path = run / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return change


def flip_byte(run: Path) -> None:
    path = run / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_checkpoints(run: Path) -> None:
    for path in checkpoint_paths(run):
        path.write_bytes(b"junk")


def pickle_as_model(run: Path) -> None:
    (run / "model.safetensors").write_bytes(pickle.dumps(Malicious(run / MARKER)))


def yaml_alias_bomb() -> str:
    """A few hundred bytes of YAML whose aliases nest 9^9 strings: a naive repr in the message would never end."""
    lines, previous = ["layers:", "  - {type: Dropout, rate: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]}"], "a"
    for name in "bcdefgh":
        lines.append(f"  - {{type: Dropout, rate: &{name} [{', '.join(['*' + previous] * 9)}]}}")
        previous = name
    return "\n".join([*lines, f"name: [{', '.join(['*h'] * 9)}]", ""])


def torch_saved(ctx: Ctx) -> str:
    path = ctx.tmp / "state_dict.pth"
    torch.save({"layers.0.0.weight": torch.zeros(2)}, path)
    return str(path)


def evaluate_with(data: str, ctx: Ctx) -> list[str]:
    return ["evaluate", str(ctx.run), "--data", data]


# ---------------------------------------------------------------- the cases: one per table row

# (input, bad form, argv from ctx, text the one-line error must contain). The first two fields are, verbatim, the
# first two cells of its row.
CLI_CASES = [
    # data files: `--data DIR` (four IDX files, plain or .gz) or `--data FILE.npz`
    ("data: IDX", "wrong magic",
     lambda c: evaluate_with(c.idx_dir(replace(IDX_NAMES["x_test"], b"GIF89a" + bytes(40))), c),
     "not an IDX file"),
    ("data: IDX", "truncated", lambda c: evaluate_with(c.idx_dir(cut(IDX_NAMES["x_test"], 10)), c), "truncated"),
    ("data: IDX", "header claims 10^9 images", lambda c: evaluate_with(c.idx_dir(replace(
        IDX_NAMES["x_test"],
        bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (10**9, 28, 28)) + bytes(84))),
        c), "declares shape (1000000000, 28, 28)"),
    ("data: IDX", "corrupt gzip", lambda c: evaluate_with(c.idx_dir(gzip_corrupt), c), "corrupt gzip data"),
    ("data: IDX", "labels and images differ in count", lambda c: evaluate_with(c.idx_dir(
        y_test=np.array([5, 6], np.uint8)), c), "2 labels for the 3 images"),
    ("data: IDX", "label outside 0..9", lambda c: evaluate_with(c.idx_dir(y_test=np.array([5, 6, 10], np.uint8)), c),
     "label 10 out of range 0..9"),
    ("data: IDX", "images not 28x28", lambda c: evaluate_with(c.idx_dir(x_test=np.zeros((3, 32, 32), np.uint8)), c),
     "expected (N, 28, 28)"),
    ("data: folder", "a file missing",
     lambda c: evaluate_with(c.idx_dir(lambda f: (f / IDX_NAMES["y_test"]).unlink()), c),
     "no t10k-labels-idx1-ubyte file"),
    ("data: npz", "missing key", lambda c: evaluate_with(c.npz(x_train=SMALL["x_train"], y_train=SMALL["y_train"]), c),
     "missing arrays x_test, y_test"),
    ("data: npz", "pickled object array", lambda c: evaluate_with(c.npz(
        **{**SMALL, "x_test": np.array([{"a": 1}] * 3, dtype=object)}), c), "refusing to unpickle"),
    ("data: npz", "not a zip", lambda c: evaluate_with(c.file("junk.npz", b"junk"), c), "not a readable .npz file"),
    # spec files: `--model FILE` / `summary FILE` (.toml, .json, .yaml)
    ("spec file", "unknown layer", lambda c: ["summary", c.spec([{"type": "Conv3D"}, {"type": "Dense", "units": 10}])],
     "layer 0 has unknown type 'Conv3D'"),
    ("spec file", "unknown field", lambda c: ["summary", c.spec([{"type": "Flatten", "colour": 1},
                                                                  {"type": "Dense", "units": 10}])],
     "layer 0 (Flatten): unknown field 'colour'"),
    ("spec file", "missing field", lambda c: ["summary", c.spec([{"type": "Flatten"}, {"type": "Dense"}])],
     "layer 1 (Dense): missing required field 'units'"),
    ("spec file", "kernel larger than its input", lambda c: ["summary", c.spec([
        {"type": "Conv2D", "filters": 8, "kernel_size": 29}, {"type": "Flatten"}, {"type": "Dense", "units": 10}])],
     "layer 0 (Conv2D): kernel 29x29 is larger than its input 28x28"),
    ("spec file", "negative value", lambda c: ["summary", c.spec([
        {"type": "Conv2D", "filters": -8, "kernel_size": 3}, {"type": "Flatten"}, {"type": "Dense", "units": 10}])],
     "layer 0 (Conv2D): field 'filters' must be a positive integer, got -8"),
    ("spec file", "NaN", lambda c: ["summary", c.file("nan.json", '{"layers": [{"type": "Flatten"}, {"type": '
                                                     '"Dropout", "rate": NaN}, {"type": "Dense", "units": 10}]}')],
     "layer 1 (Dropout): field 'rate' must be a number in [0, 1), got nan"),
    ("spec file", "wrong type", lambda c: ["summary", c.spec([{"type": "Flatten"}, {"type": "Dense", "units": "10"}])],
     "layer 1 (Dense): field 'units' must be a positive integer, got '10'"),
    ("spec file", "a list as the layer type", lambda c: ["summary", c.spec([{"type": ["Dense"]}])],
     "layer 0 has unknown type ['Dense']"),
    ("spec file", "a key given twice (JSON, YAML)", lambda c: ["summary", c.file("net.json", '{"layers": [{"type": '
     '"Flatten"}, {"type": "Dense", "units": 10, "units": 20}]}')], "key 'units' is given twice in the same object"),
    ("spec file", "bad syntax", lambda c: ["summary", c.file("net.toml", "layers = [ { type = ")], "not valid TOML"),
    ("spec file", "YAML object tag",
     lambda c: ["summary", c.file("net.yaml", '!!python/object/apply:os.system ["id"]')],
     "not valid YAML"),
    ("spec file", "YAML alias bomb", lambda c: ["summary", c.file("net.yaml", yaml_alias_bomb())],
     "'name' must be a non-empty string, got [[[...], [...]"),
    ("spec file", "over 100 million parameters", lambda c: ["summary", c.spec(
        [{"type": "Flatten"}, {"type": "Dense", "units": 10**9}, {"type": "Dense", "units": 10}])],
     "layer 1 (Dense): the model would have 785,000,000,000 parameters"),
    ("spec file", "input not 28x28x1",
     lambda c: ["summary", c.spec([{"type": "Flatten"}, {"type": "Dense", "units": 10}], input_shape=[32, 32, 3])],
     "'input_shape' must be [28, 28, 1] (an image) or [784] (flat)"),
    ("spec file", "not ending in class scores", lambda c: ["summary", c.spec([{"type": "Conv2D", "filters": 8,
                                                                                "kernel_size": 3}])],
     "last layer must give a flat vector of class scores"),
    ("spec file", "5 class scores for 10 classes", lambda c: [
        "train", "--model", c.spec([{"type": "Flatten"}, {"type": "Dense", "units": 5}]), "--limit-train", "64",
        "--out", str(c.tmp / "out")], "its last layer gives 5 class scores, but the data has 10 classes"),
    ("spec file", "unknown suffix", lambda c: ["summary", c.file("net.txt", "{}")], "unknown model"),
    # command-line values
    ("CLI value", "`train --epochs 0`", lambda c: ["train", "--epochs", "0"],
     "--epochs must be a positive integer, got 0"),
    ("CLI value", "`train --lr nan`", lambda c: ["train", "--lr", "nan"], "--lr must be in (0, 10), got nan"),
    ("CLI value", "`train --seed -1`", lambda c: ["train", "--seed", "-1"],
     "--seed must be an integer from 0 to 2**32 - 1"),
    ("CLI value", "`train --validation-split 1.5`", lambda c: ["train", "--validation-split", "1.5"],
     "validation_split=1.5: expected a fraction in [0, 1)"),
    ("CLI value", "`train --model keras-dropout --limit-train 3000` (its recipe holds out 5,000)",
     lambda c: ["train", "--model", "keras-dropout", "--limit-train", "3000", "--out", str(c.tmp / "r")],
     "val_size=5000: expected a whole number from 0 to 2999 (3,000 training images; a model's recipe may set the "
     "split: change it with train's --val-size or --validation-split"),
    ("CLI value", "`train --rotation 400`", lambda c: ["train", "--rotation", "400"], "augment rotation=400.0"),
    ("CLI value", "`train --model nope`", lambda c: ["train", "--model", "nope"], "unknown model 'nope'"),
    ("CLI value", "`train --early-stopping 3` without a validation set", lambda c: ["train", "--early-stopping", "3"],
     "--early-stopping needs a validation set"),
    ("CLI value", "`train --min-delta 0.01` without `--early-stopping` or `--restore-best`",
     lambda c: ["train", "--min-delta", "0.01"], "--min-delta is for --early-stopping and --restore-best"),
    ("CLI value", "`train --monitor val_accuracy` without `--early-stopping`, `--restore-best` or `--schedule plateau`",
     lambda c: ["train", "--monitor", "val_accuracy"],
     "--monitor is for --early-stopping, --restore-best and --schedule plateau"),
    ("CLI value", "`train --lr-patience 3` without `--schedule plateau`", lambda c: ["train", "--lr-patience", "3"],
     "--lr-patience sets the plateau schedule (Keras's ReduceLROnPlateau); this run's schedule is constant"),
    ("CLI value", "`train --schedule plateau` without a validation set", lambda c: ["train", "--schedule", "plateau"],
     "--schedule plateau needs a validation set"),
    ("CLI value", "`train --lr-decay 0.9` without `--schedule exponential`", lambda c: ["train", "--lr-decay", "0.9"],
     "--lr-decay is the exponential schedule's factor per epoch; this run's schedule is constant"),
    ("CLI value", "`train --out` an existing file", lambda c: ["train", "--limit-train", "64", "--out",
                                                               c.file("taken", b"")], "taken is a file, not a folder"),
    ("CLI value", "`train --out` a folder that holds a run", lambda c: ["train", "--limit-train", "64", "--out",
                                                                 str(c.run)], "already holds a run; continue it with"),
    ("CLI value", "`evaluate --limit-test 0`", lambda c: ["evaluate", str(c.run), "--limit-test", "0"],
     "--limit-test must be a positive integer, got 0"),
    ("CLI value", "`explain --index 10000`", lambda c: ["explain", str(c.run), "--index", "10000"],
     "test index 10000 is out of range"),
    ("CLI value", "`export --format torchscript --out model.onnx`",
     lambda c: ["export", str(c.run), "--format", "torchscript", "--out", str(c.tmp / "model.onnx")],
     "--format torchscript, but the suffix of"),
    ("CLI value", "`export --out model.zip`", lambda c: ["export", str(c.run), "--out", str(c.tmp / "model.zip")],
     "cannot tell the format of"),
    ("CLI value", "`export RUN --out RUN/model.safetensors` (or any of the run's own files)",
     lambda c: ["export", str(c.run), "--out", str(c.run / "model.safetensors")],
     "one of the exported run's own files"),
    ("CLI value", "`report RUN --out RUN/model.safetensors` (or any of the run's own files)",
     lambda c: ["report", str(c.run), "--out", str(c.run / "model.safetensors")], "is one of the run's own files"),
    ("CLI value", "`predict --show-preprocessed` under a file", lambda c: [
        "predict", str(c.run), c.file("one.png", digit_png()), "--show-preprocessed", c.file("f", b"") + "/sub"],
     "is a file, not a folder"),
    ("CLI value", "`serve --port 70000`", lambda c: ["serve", str(c.run), "--port", "70000"],
     "--port must be an integer from 0 to 65535, got 70000"),
    ("CLI value", "`serve --port` already taken", lambda c: ["serve", str(c.run), "--port", c.taken_port()],
     "cannot listen on 127.0.0.1:"),
    ("CLI value", "`ensemble --train 0`", lambda c: ["ensemble", str(c.run), "--train", "0", "--out", str(c.tmp / "e")],
     "--train must be a positive integer, got 0"),
    ("CLI value", "`ensemble --out NAME.safetensors`", lambda c: ["ensemble", str(c.run), "--out",
                                                                 str(c.tmp / "e.safetensors")],
     "an ensemble is written as a folder"),
    ("CLI value", "`ensemble RUN --epochs 3` (without `--train`)",
     lambda c: ["ensemble", str(c.run), "--epochs", "3", "--out", str(c.tmp / "e")],
     "--epochs is for the members that --train N trains"),
    ("CLI value", "`experiment --seeds 0`", lambda c: ["experiment", c.file("grid.toml", "[axes]\nlr = [1e-3]\n"),
                                                       "--seeds", "0"], "--seeds must be a positive integer, got 0"),
    ("CLI value", "`summary keras-dropout --kernel-size 40`",
     lambda c: ["summary", "keras-dropout", "--kernel-size", "40"],
     "layer 1 (Conv2D): kernel 40x40 is larger than its input 28x28"),
    ("CLI value", "not a number (`--epochs x`)", lambda c: ["train", "--epochs", "x"], "usage:"),
    # images: `predict RUN IMAGE...`, `explain RUN --image IMAGE`
    ("image file", "not an image", lambda c: ["predict", str(c.run), c.file("x.png", b"hello")], "not an image"),
    ("image file", "truncated", lambda c: ["predict", str(c.run), c.file("x.png", digit_png()[:90])],
     "truncated or corrupt image data"),
    ("image file", "decompression bomb", lambda c: ["explain", str(c.run), "--image", c.file("x.png", bomb_png())],
     "refused before decoding"),
    ("image file", "blank", lambda c: ["predict", str(c.run), c.file("x.png", png(Image.new("L", (40, 40), 255)))],
     "image is blank"),
    ("image file", "missing", lambda c: ["predict", str(c.run), str(c.tmp / "nope.png")], "cannot read file"),
    # runs, weights and checkpoints: `evaluate/report/explain/predict/export/serve RUN`, `train --resume RUN`
    ("run directory", "missing", lambda c: ["evaluate", str(c.tmp / "no-run")], "no-run does not exist: expected a "
     "run or ensemble directory (or its .safetensors file)"),
    ("run directory", "a folder without a run", lambda c: ["evaluate", str(c.tmp)],
     "is not a run directory: model.safetensors not found"),
    ("run directory", "an exported ONNX file", lambda c: ["predict", c.file("model.onnx", b"\x08\x07"),
                                                         c.file("x.png", digit_png())],
     "model.onnx is an ONNX model, which onnxruntime runs; mnist-cnn reads a run directory or its .safetensors"),
    ("run directory", "interrupted (checkpoints, no model yet)",
     lambda c: ["evaluate", c.run_copy(lambda run: (run / "model.safetensors").unlink())],
     "holds an interrupted run (no model.safetensors yet); finish it with `mnist-cnn train --resume"),
    ("run directory", "weights damaged", lambda c: ["evaluate", c.run_copy(flip_byte)],
     "is damaged: its checksum does not match its contents"),
    ("run directory", "config.json not JSON", lambda c: ["evaluate", c.run_copy(replace("config.json", b"{bad"))],
     "config.json is not valid JSON"),
    ("run directory", "history.json not a list", lambda c: ["report", c.run_copy(replace("history.json", b"{}"))],
     "history.json: expected a JSON list, got dict"),
    ("run directory", "history.json row without a loss", lambda c: ["report", c.run_copy(replace(
        "history.json", b'[{"epoch": 1}]'))], "history.json: row 0 should hold an integer epoch and numbers"),
    ("weights file", "pickled `.pt` that runs code", lambda c: ["evaluate", c.file(
        "model.pt", pickle.dumps(Malicious(c.tmp / MARKER)))], "refusing to load a PyTorch/pickle file"),
    ("weights file", "`torch.save` state dict (`.pth`)",
     lambda c: ["predict", torch_saved(c), c.file("1.png", digit_png())],
     "refusing to load a PyTorch/pickle file"),
    ("weights file", "a pickle renamed `model.safetensors`",
     lambda c: ["serve", c.run_copy(pickle_as_model), "--port", "0"],
     "refusing to load a PyTorch/pickle file"),
    ("`--resume`", "not a run", lambda c: ["train", "--resume", str(c.tmp)], "no config.json there"),
    ("`--resume`", "no checkpoints, but a model", lambda c: ["train", "--resume", c.run_copy(
        lambda r: shutil.rmtree(r / "checkpoints"))], "has no checkpoints to resume from"),
    ("`--resume`", "every checkpoint damaged", lambda c: ["train", "--resume", c.run_copy(damage_checkpoints)],
     "is damaged; cannot resume"),
    ("`--resume`", "config.json that names no model", lambda c: ["train", "--resume", c.run_copy(json_edit(
        "config.json", lambda d: {}))], "config.json names no model (is it a run's?)"),
    ("`--resume`", "unknown option in config.json", lambda c: ["train", "--resume", c.run_copy(json_edit(
        "config.json", lambda d: {**d, "colour": 1}))], "config.json has unknown option 'colour'"),
    ("`--resume`", "with a setting of what it trains", lambda c: ["train", "--resume", str(c.run), "--lr", "0.5"],
     "only --epochs, --device, --threads and --no-cuda-graph may be given with it, got --lr"),
    ("`--resume`", "wrong type in config.json", lambda c: ["train", "--resume", c.run_copy(json_edit(
        "config.json", lambda d: {**d, "lr_decay": "fast"}))], "--lr-decay must be in (0, 1], got 'fast'"),
]

# (input, bad form, request as kwargs of TestClient.post("/v1/predict"), HTTP status, error code)
ARRAY = [[0] * 28] * 28
HTTP_CASES = [
    ("HTTP body", "JSON array not 28x28", {"json": {"images": [[[0] * 27] * 28]}}, 422, "bad_shape"),
    ("HTTP body", "JSON values outside the range", {"json": {"images": [[[1.5] * 28] * 28]}}, 422, "out_of_range"),
    ("HTTP body", "NaN in JSON", {"content": b'{"images": [[' + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28)
                                  + b"]]}", "headers": {"content-type": "application/json"}}, 422, "out_of_range"),
    ("HTTP body", "not JSON", {"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "bad_json"),
    ("HTTP body", "too large", {"content": bytes(1_000_001), "headers": {"content-type": "image/png"}}, 413,
     "body_too_large"),
    ("HTTP body", "too many images", {"json": {"images": [ARRAY] * 257}}, 413, "too_many_images"),
    ("HTTP body", "wrong content type", {"content": b"7", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ("HTTP body", "upload not an image", {"files": {"file": ("x.png", b"hello", "image/png")}}, 422, "not_an_image"),
    ("HTTP body", "upload is a decompression bomb", {"files": {"file": ("x.png", bomb_png(), "image/png")}}, 413,
     "image_too_large"),
    # header-only PNGs: decoding them would say truncated_image, so this answer comes before decoding
    ("HTTP body", "images over the pixel budget of one request", {"files": [
        ("file", (f"{i}.png", bomb_png(5000, 4000), "image/png")) for i in range(3)]}, 413, "too_many_pixels"),
]
STALLED = ("HTTP body", "stalled mid-body")  # needs a real socket: its own test below
# Rows about connections rather than bodies: each is a test in tests/test_serve_hostile.py, on a real server.
CONNECTION_ROWS = [("HTTP connection", "headers or body sent a byte at a time"),
                   ("HTTP connection", "idle, before a request or between two"),
                   ("HTTP connection", "more connections open than the cap"),
                   ("HTTP connection", "malformed request line")]

ALL_ROWS = [c[:2] for c in CLI_CASES] + [c[:2] for c in HTTP_CASES] + [STALLED] + CONNECTION_ROWS


# ---------------------------------------------------------------- the tests

@pytest.mark.parametrize("kind, form, argv, expected", CLI_CASES, ids=[f"{c[0]}: {c[1]}" for c in CLI_CASES])
def test_a_bad_input_gets_one_line_and_exit_2(run_dir, tmp_path, capsys, kind, form, argv, expected):
    ctx = Ctx(run_dir, tmp_path)
    try:
        args = argv(ctx)
        if args[0] == "serve":
            pytest.importorskip("fastapi", reason="the service needs the 'serve' extra")
        try:
            code = main(args)
        except SystemExit as e:  # argparse's own usage errors: exit 2 with its usage text
            code = e.code
    finally:
        for s in ctx.sockets:
            s.close()
    out, err = capsys.readouterr()
    assert code == 2, (args, out, err)
    assert "Traceback" not in err and expected in err, err
    if expected != "usage:":
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert not list(tmp_path.rglob(MARKER)), "a pickle was loaded: its code ran"


@pytest.fixture(scope="module")
def client(run_dir):
    pytest.importorskip("fastapi", reason="the service needs the 'serve' extra")
    from mnist_cnn.serve import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    return TestClient(create_app(run_dir, max_body_bytes=1_000_000))


@pytest.mark.parametrize("kind, form, request_kwargs, status, code", HTTP_CASES,
                         ids=[f"{c[0]}: {c[1]}" for c in HTTP_CASES])
def test_a_bad_http_body_gets_a_4xx_json_error(client, kind, form, request_kwargs, status, code):
    r = client.post("/v1/predict", **request_kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and "\n" not in r.json()["detail"]


def test_a_stalled_body_gets_408(run_dir, start_server):
    pytest.importorskip("fastapi", reason="the service needs the 'serve' extra")
    from mnist_cnn.serve import create_app, uvicorn_options
    from mnist_cnn.serve_limits import ServeLimits

    url = start_server(create_app(run_dir), **uvicorn_options(ServeLimits(request_timeout_s=0.3)))
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                  + bytes(10))
        start = time.monotonic()
        reply = b""
        while b"request_timeout" not in reply and time.monotonic() - start < 10:  # headers and body may come apart
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply
    assert time.monotonic() - start < 5


def table_rows() -> list[tuple[str, str]]:
    text = TABLE.read_text(encoding="utf-8")
    assert SECTION in text, f"{TABLE} has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[2:]]  # skip head, rule
    return [(row[0], row[1]) for row in rows]


def test_the_table_has_a_row_per_case_and_a_case_per_row():
    rows = table_rows()
    assert len(rows) == len(CLI_CASES) + len(HTTP_CASES) + 1 + len(CONNECTION_ROWS)  # + the stalled body
    assert rows == ALL_ROWS


def test_the_real_command_prints_one_line_and_debug_shows_the_traceback(tmp_path):
    spec = tmp_path / "huge.json"
    spec.write_text(json.dumps({"layers": [{"type": "Flatten"}, {"type": "Dense", "units": 10**9},
                                           {"type": "Dense", "units": 10}]}))
    r = subprocess.run([sys.executable, "-m", "mnist_cnn", "summary", str(spec)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 2 and r.stdout == ""
    assert re.fullmatch(r"error: .*huge\.json: layer 1 \(Dense\): the model would have 785,000,000,000 parameters"
                        r" up to this layer, more than the limit of 100,000,000\n", r.stderr), r.stderr
    with pytest.raises(MnistCnnError, match="unknown model"):
        main(["--debug", "summary", "nope"])


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mnist_cnn"  # the source the static checks read


def test_every_file_the_package_writes_goes_through_atomic_write():
    """A user's file is never left half-written: the package writes only via atomic.py (temp file, fsync, rename);
    savers that take a path get an in-memory buffer (or a private temp folder) instead."""
    for path in PACKAGE.rglob("*.py"):
        if path.name == "atomic.py":
            continue
        code = path.read_text(encoding="utf-8")
        assert not re.search(r"\.write_(text|bytes)\(", code), path.name
        assert not re.search(r"\bopen\([^)]*[\"'][rb+]*[wax]", code), path.name
        targets = re.findall(r"(?:savefig|savez_compressed|savez|(?<!jit)\.save)\(\s*([\w.]+)", code)
        targets += re.findall(r"jit\.save\(\s*\w+,\s*([\w.]+)", code)  # jit.save(module, where)
        for target in targets:
            assert target in ("buf", "os.path.join"), f"{path.name} saves straight to {target}"


def test_nothing_in_the_package_unpickles():
    """No torch.load without weights_only=True, no np.load(allow_pickle=True), no pickle/marshal/shelve, no
    yaml.load; torch.jit.load only in export.run_exported (check_parity reads back the file it just exported)."""
    for path in PACKAGE.rglob("*.py"):
        code = "\n".join(line for line in path.read_text(encoding="utf-8").splitlines()
                         if not line.lstrip().startswith("#"))
        code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings show how others may load our exports
        for call in re.findall(r"torch\.load\([^)]*\)", code):
            assert "weights_only=True" in call, f"{path.name}: {call}"
        assert not re.search(r"allow_pickle\s*=\s*True", code), path.name
        assert not re.search(r"^\s*(import|from)\s+(pickle|cPickle|dill|marshal|shelve|joblib)\b", code,
                             re.MULTILINE), path.name
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", code), path.name
        if "torch.jit.load(" in code:
            assert path.name == "export.py", path.name
