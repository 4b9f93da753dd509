"""Beyond ten digits: EMNIST, Kuzushiji, Quick, Draw! and image folders, read with their class names, trained on,
and answered by name in predict, serve, evaluate and exports. Every file is built here: nothing is downloaded."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from glyphs import SHAPES, drawing, mnist_form
from images import encode

from mnist_cnn import loaders
from mnist_cnn.data import MnistData, load_mnist
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.evaluation import format_metrics, metrics_from_logits
from mnist_cnn.idx import write_idx
from mnist_cnn.loaders import detect_kind, load_data
from mnist_cnn.predict import format_predictions, predict_files
from mnist_cnn.runs import load_run
from mnist_cnn.training import make_config, train
from mnist_cnn.zoo import MODELS, get_spec

# EMNIST-style: labels count from 1 as in emnist-letters, names from ASCII codes; each glyph's transpose
# looks like another class ("|" and "-", "L" and a "7"), so images left transposed teach the wrong name.
EMNIST_GLYPHS = {"bar": "|", "dash": "-", "L": "L", "seven": "7"}


def write_emnist(directory, split="emnist-letters", per_class=60, seed=0):
    """Upright drawings stored as EMNIST stores them: transposed, gzipped IDX, labels 1..4, a mapping file."""
    names = list(EMNIST_GLYPHS)
    for part, count, s in (("train", per_class, seed), ("test", per_class // 4, seed + 1)):
        x, y = mnist_form(names, count, s)
        write_idx(directory / f"{split}-{part}-images-idx3-ubyte.gz", x.transpose(0, 2, 1))
        write_idx(directory / f"{split}-{part}-labels-idx1-ubyte.gz", y + 1)
    mapping = "".join(f"{i + 1} {ord(c)} {ord(c.lower())}\n" for i, c in enumerate(EMNIST_GLYPHS.values()))
    (directory / f"{split}-mapping.txt").write_text(mapping)
    return directory


def quick_train(tmp_path, data, name="run", epochs=2, model="fast-cnn"):
    config = make_config(model=model, epochs=epochs, batch_size=32, out=str(tmp_path / name), threads=2, verbose=0)
    return train(config, data, log=lambda *_: None)


# ---------------------------------------------------------------- EMNIST

def test_emnist_is_read_upright_with_names_from_its_mapping(tmp_path):
    write_emnist(tmp_path)
    data = load_mnist(tmp_path)  # told apart by its file names
    assert detect_kind(tmp_path) == "emnist" and data.classes == ("|", "-", "L", "7") and data.num_classes == 4
    x, y = mnist_form(list(EMNIST_GLYPHS), 60, 0)
    assert torch.equal(data.x_train, torch.from_numpy(x)) and torch.equal(data.y_train, torch.from_numpy(y).long())
    stored = load_data(tmp_path, orientation="upright")  # as the file holds them
    assert torch.equal(stored.x_train, data.x_train.transpose(1, 2))
    assert len(load_mnist(tmp_path, test_only=True).x_train) == 0


def test_a_model_trained_on_emnist_predicts_an_upright_drawing_by_its_name(tmp_path):
    """Fails when the orientation is not put right: '|' would be learned from '-' strokes and answered '-'."""
    (tmp_path / "emnist").mkdir()
    run = quick_train(tmp_path, load_mnist(write_emnist(tmp_path / "emnist")))
    assert run.classes == ("|", "-", "L", "7") and run.metrics["accuracy"] >= 0.9
    for glyph, name in (("bar", "|"), ("L", "L")):
        path = tmp_path / f"{glyph}.png"
        path.write_bytes(encode(drawing(glyph, dark_on_light=True, size=200)))
        [result] = predict_files(load_run(run.path), path)
        assert result["label"] == name and result["digit"] == list(EMNIST_GLYPHS.values()).index(name)


def test_emnist_folder_with_every_split_takes_a_prefix(tmp_path):
    write_emnist(tmp_path, "emnist-letters", per_class=4)
    write_emnist(tmp_path, "emnist-balanced", per_class=4)
    with pytest.raises(MnistCnnError, match=r"holds the EMNIST splits emnist-balanced, emnist-letters: give one of "
                                            r"them as .*emnist-balanced"):
        load_mnist(tmp_path)
    assert load_mnist(tmp_path / "emnist-letters").classes == ("|", "-", "L", "7")
    with pytest.raises(MnistCnnError, match=r"emnist-digits: no emnist-digits-\*-images-idx3-ubyte files"):
        load_mnist(tmp_path / "emnist-digits")


def test_emnist_problems_are_one_line_naming_the_file(tmp_path, monkeypatch):
    write_emnist(tmp_path, per_class=4)
    mapping = tmp_path / "emnist-letters-mapping.txt"
    mapping.write_text("1 65 97\nB 66\n")
    with pytest.raises(MnistCnnError, match=r"mapping\.txt: line 2 is 'B 66', expected a label and character codes"):
        load_mnist(tmp_path)
    mapping.write_text("1 65\n2 66\n")  # four classes in the labels, two names
    with pytest.raises(MnistCnnError, match=r"train-labels-idx1-ubyte\.gz: label 3 out of range 0\.\.1"):
        load_mnist(tmp_path)
    mapping.unlink()  # no names: the label range names the classes; 1..4 fit among the digits' 0..9
    assert load_mnist(tmp_path).classes is None
    monkeypatch.setattr(loaders, "MAX_IMAGES", 10)
    with pytest.raises(MnistCnnError, match=r"train-images-idx3-ubyte\.gz: declares 16 items, more than the 10"):
        load_mnist(tmp_path)


# ---------------------------------------------------------------- Kuzushiji

def test_kuzushiji_npz_files_and_class_map(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        np.savez_compressed(tmp_path / f"kmnist-{split}-imgs.npz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        np.savez_compressed(tmp_path / f"kmnist-{split}-labels.npz", np.arange(n, dtype=np.uint8) % 10)
    chars = "おきすつなはまやれを"
    (tmp_path / "kmnist_classmap.csv").write_text(
        "index,codepoint,char\n" + "".join(f"{i},U+{ord(c):04X},{c}\n" for i, c in enumerate(chars)), encoding="utf-8")
    data = load_mnist(tmp_path)
    assert data.classes == tuple(chars) and (len(data.x_train), len(data.x_test)) == (30, 10)
    assert data.y_test.tolist() == list(range(10))
    (tmp_path / "kmnist_classmap.csv").write_text("index,char\n0,お\n2,き\n", encoding="utf-8")
    with pytest.raises(MnistCnnError, match=r"kmnist_classmap\.csv: the index column should count 0, 1, 2"):
        load_mnist(tmp_path)
    (tmp_path / "kmnist_classmap.csv").unlink()
    assert load_mnist(tmp_path).classes is None  # labels 0..9 without names: the digits' numbering


# ---------------------------------------------------------------- Quick, Draw!

def test_quickdraw_npy_files_a_cap_per_class_and_a_deterministic_split(tmp_path):
    for i, name in enumerate(("cat", "full_numpy_bitmap_dog", "tree")):
        np.save(tmp_path / f"{name}.npy", np.full((40, 784), i + 1, np.uint8))
    data = load_data(tmp_path, per_class=14)
    assert data.classes == ("cat", "dog", "tree") and (len(data.x_train), len(data.x_test)) == (36, 6)
    assert np.bincount(data.y_test.numpy()).tolist() == [2, 2, 2]
    assert torch.equal(data.x_train[:, 0, 0], data.y_train.to(torch.uint8) + 1)  # each image kept its label
    assert len(set(data.y_train[-6:].tolist())) > 1  # classes interleaved: a validation split takes all of them
    again = load_data(tmp_path, per_class=14)
    assert torch.equal(again.y_train, data.y_train) and torch.equal(again.y_test, data.y_test)
    np.save(tmp_path / "tree.npy", np.zeros((5, 28, 29), np.uint8))
    with pytest.raises(MnistCnnError, match=r"tree\.npy: holds uint8 of shape \(5, 28, 29\), expected uint8 drawings"):
        load_data(tmp_path)


# ---------------------------------------------------------------- image folders

@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A dozen named classes as scans would be: dark ink on light paper, 64x64 PNGs, one folder per class."""
    root = tmp_path_factory.mktemp("glyph-folders")
    rng = np.random.default_rng(1)
    for split, count in (("train", 24), ("test", 4)):
        for name in SHAPES:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                (root / split / name / f"{i}.png").write_bytes(encode(drawing(name, rng, 64, dark_on_light=True)))
    data = load_mnist(root)
    assert data.classes == tuple(sorted(SHAPES)) and (len(data.x_train), len(data.x_test)) == (288, 48)
    return quick_train(tmp_path_factory.mktemp("folder-run"), data, epochs=6)


def test_an_image_folder_of_a_dozen_classes_trains_and_predicts_by_name(folder_run, tmp_path):
    run = load_run(folder_run.path)
    assert run.classes == tuple(sorted(SHAPES)) and run.metrics["accuracy"] >= 0.9
    assert json.loads((run.path / "classes.json").read_text()) == {"classes": sorted(SHAPES)}
    assert run.metrics["classes"] == sorted(SHAPES) and set(run.metrics["top_k"]) == {"top3", "top5"}
    path = tmp_path / "my-triangle.png"
    path.write_bytes(encode(drawing("triangle", size=300, dark_on_light=True)))
    [result] = predict_files(run.path, path)
    assert result["label"] == "triangle" and run.classes[result["digit"]] == "triangle"
    assert result["top3"][0]["label"] == "triangle" and len(result["probabilities"]) == 12
    assert format_predictions([result]).split()[1] == "triangle"


def test_serve_answers_with_the_names(folder_run):
    pytest.importorskip("fastapi")
    from mnist_cnn.serve import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    client = TestClient(create_app(folder_run.path))
    assert client.get("/healthz").json()["model"]["classes"] == sorted(SHAPES)
    upload = {"file": ("x.png", encode(drawing("X", size=120, dark_on_light=True)), "image/png")}
    [prediction] = client.post("/v1/predict", files=upload).json()["predictions"]
    assert prediction["label"] == "X" and sorted(SHAPES)[prediction["digit"]] == "X"


def test_exports_carry_the_names(folder_run, tmp_path):
    from mnist_cnn.export import export_model

    path = export_model(folder_run, "torchscript", tmp_path / "model.pt")
    extra = {"classes.json": "", "meta.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["classes.json"]) == sorted(SHAPES) == json.loads(extra["meta.json"])["classes"]


def test_image_folder_problems_are_one_line(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "1.png").write_bytes(encode(drawing("bar", size=40)))
    with pytest.raises(MnistCnnError, match=r"/b: no image files in this class folder"):
        load_mnist(tmp_path)
    (tmp_path / "b" / "1.png").write_bytes(b"not a png")
    with pytest.raises(MnistCnnError, match=r"b/1\.png"):
        load_mnist(tmp_path)


def test_one_folder_of_class_folders_holds_out_a_test_split(tmp_path):
    for name in ("bar", "dash"):
        (tmp_path / name).mkdir()
        for i in range(7):
            (tmp_path / name / f"{i}.png").write_bytes(encode(drawing(name, np.random.default_rng(i), 40)))
    data = load_mnist(tmp_path)
    assert data.classes == ("bar", "dash") and (len(data.x_train), len(data.x_test)) == (12, 2)


# ---------------------------------------------------------------- heads, metrics, MNIST unchanged

def test_every_zoo_model_follows_the_class_count():
    for name in MODELS:
        assert get_spec(name, num_classes=47).num_classes == 47
        assert get_spec(name).to_dict() == get_spec(name, num_classes=10).to_dict()


def test_a_spec_whose_head_does_not_match_the_data_is_refused(tmp_path):
    spec = get_spec("mlp").to_dict()
    (tmp_path / "ten.json").write_text(json.dumps(spec))
    x, y = mnist_form(["bar", "dash", "L"], 4)
    data = MnistData(x, y, x, y, source="glyphs", classes=("bar", "dash", "L"))
    with pytest.raises(MnistCnnError, match=r"ten\.json: its last layer gives 10 class scores, but the data has "
                                            r"3 classes"):
        quick_train(tmp_path, data, model=str(tmp_path / "ten.json"))


def test_named_metrics_add_top_k_and_the_most_frequent_confusions():
    names = tuple(f"c{i}" for i in range(30))
    y = torch.arange(30).repeat(2)
    logits = torch.nn.functional.one_hot(y, 30).float()
    logits[:3] = torch.nn.functional.one_hot(torch.tensor([1, 1, 3]), 30).float() * 2 + logits[:3]
    metrics = metrics_from_logits(logits, y, names)
    assert metrics["accuracy"] == 58 / 60 and metrics["top_k"] == {"top3": 1.0, "top5": 1.0}
    assert metrics["confusions"] == [{"true": "c0", "predicted": "c1", "count": 1},
                                     {"true": "c2", "predicted": "c3", "count": 1}]
    assert metrics["per_class"][0]["name"] == "c0"
    text = format_metrics(metrics)
    assert "top3 100.00%" in text and "c0 -> c1" in text and "confusion matrix" not in text


def test_mnist_runs_are_as_before(trained_run):
    assert trained_run.classes is None and not (trained_run.path / "classes.json").exists()
    assert load_run(trained_run.path).classes is None
    assert "top_k" not in trained_run.metrics and "label" not in predict_files(
        trained_run, encode(drawing("bar", size=100)))[0]


def test_report_names_the_classes(folder_run, tmp_path):
    from mnist_cnn.report import report

    page = report(folder_run.path, tmp_path / "report.html").read_text()
    assert ">triangle</td>" in page and ">equals</td>" in page


def test_the_confusion_picture_grows_to_62_named_classes():
    from PIL import Image

    from mnist_cnn.display import png_bytes
    from mnist_cnn.explain import plot_confusion

    names = [chr(c) for r in ((48, 58), (65, 91), (97, 123)) for c in range(*r)]  # EMNIST byclass: 0-9, A-Z, a-z
    png = png_bytes(plot_confusion(np.eye(62, dtype=int) * 5, classes=names))
    assert len(names) == 62 and Image.open(io.BytesIO(png)).size == (1540, 1364)
    assert Image.open(io.BytesIO(png_bytes(plot_confusion(np.eye(10, dtype=int))))).size == (700, 620)  # ten as before


def test_an_ensemble_of_named_runs_answers_with_the_names(folder_run, tmp_path):
    from mnist_cnn.ensemble import ensemble_runs, load_ensemble, write_ensemble

    out = write_ensemble(tmp_path / "ens", ensemble_runs([folder_run.path]), {}, classes=folder_run.classes)
    assert load_ensemble(out).classes == tuple(sorted(SHAPES))
    [result] = predict_files(out, encode(drawing("plus", size=90, dark_on_light=True)))
    assert result["label"] == "plus"
