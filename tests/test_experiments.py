"""Experiments: a tiny grid over two seeds runs end to end and summarises each cell."""

import json

import numpy as np
import pytest

from mnist_cnn import MnistCnnError
from mnist_cnn.cli import main
from mnist_cnn.experiments import cell_label, cells, check_grid, load_grid, make_cell_config, mean_std

TINY = """
name = "tiny"
seeds = 3
[base]
model = "keras-dropout"
epochs = 1
batch_size = 100
limit_train = 500
val_size = 100
limit_test = 300
[axes]
model_options.kernel_size = [3, 5]
"""


def test_experiment_command_runs_a_tiny_grid(tmp_path, capsys):
    grid = tmp_path / "tiny.toml"
    grid.write_text(TINY)
    out = tmp_path / "exp"
    assert main(["experiment", str(grid), "--seeds", "2", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((out / "results.json").read_text())
    assert printed["cells"] == results["cells"]
    assert [c["label"] for c in results["cells"]] == ["kernel_size=3", "kernel_size=5"]
    for cell in results["cells"]:
        assert [r["seed"] for r in cell["runs"]] == [0, 1]
        accs = [r["test_accuracy"] for r in cell["runs"]]
        assert cell["test_accuracy_mean"] == pytest.approx(sum(accs) / 2)
        assert cell["test_accuracy_std"] == pytest.approx(mean_std(accs)[1])
        assert cell["val_accuracy_mean"] is not None
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    # a second call reuses the finished runs and prints the table
    assert main(["experiment", str(grid), "--seeds", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("reusing finished run") == 4 and "kernel_size=5" in text and "±" in text


def test_grid_file_of_the_tutorial_ablation():
    grid = load_grid("benchmarks/ablation_keras_dropout.toml")
    assert grid["seeds"] == 3 and len(cells(grid)) == 4
    labels = [cell_label(c) for c in cells(grid)]
    assert labels == ["kernel_size=3 dropout=true", "kernel_size=3 dropout=false",
                      "kernel_size=5 dropout=true", "kernel_size=5 dropout=false"]
    config = make_cell_config(grid, cells(grid)[3], seed=2)
    assert config.model_options == {"kernel_size": 5, "dropout": False} and config.seed == 2
    assert config.val_size == 5000 and config.epochs == 20  # the tutorial recipe of keras-dropout


def test_bad_grids_are_refused_before_training(tmp_path):
    with pytest.raises(MnistCnnError, match="unknown top-level key 'axis'"):
        check_grid({"base": {}, "axis": {}})
    with pytest.raises(MnistCnnError, match="non-empty list"):
        check_grid({"base": {"model": "mlp"}, "axes": {"epochs": 3}})
    with pytest.raises(MnistCnnError, match="cell epochs=0"):
        check_grid({"base": {"model": "mlp"}, "axes": {"epochs": [1, 0]}})
    with pytest.raises(MnistCnnError, match="no option 'width'"):
        check_grid({"base": {"model": "keras-dropout"}, "axes": {"model_options": {"width": [1]}}})
    bad = tmp_path / "bad.toml"
    bad.write_text("base = [")
    with pytest.raises(MnistCnnError, match="not valid TOML"):
        load_grid(bad)
    with pytest.raises(MnistCnnError, match=r"grid.yaml: unknown grid file type '.yaml'; expected .toml or .json"):
        load_grid(tmp_path / "grid.yaml")


def test_mean_std():
    assert mean_std([0.99, 0.99]) == (0.99, 0.0)
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)
    assert mean_std([0.5]) == (0.5, 0.0)


def test_a_data_axis_trains_each_cell_on_its_own_data(tmp_path, mnist, capsys):
    # the second set's test labels are shifted by one, so a model evaluated on it scores near zero
    x, y, xt, yt = mnist.x_train[:1000].numpy(), mnist.y_train[:1000].numpy(), mnist.x_test[:100].numpy(), \
        mnist.y_test[:100].numpy()
    np.savez(tmp_path / "plain.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    np.savez(tmp_path / "shifted.npz", x_train=x, y_train=y, x_test=xt, y_test=(yt + 1) % 10)
    grid = tmp_path / "data.toml"
    grid.write_text(f'[base]\nmodel = "keras-basic"\nepochs = 2\n[axes]\ndata = ["{tmp_path / "plain.npz"}", '
                    f'"{tmp_path / "shifted.npz"}"]\n')
    assert main(["experiment", str(grid), "--seeds", "1", "--out", str(tmp_path / "exp"), "--json"]) == 0
    plain, shifted = json.loads(capsys.readouterr().out.splitlines()[-1])["cells"]
    assert plain["test_accuracy_mean"] > 0.7 and shifted["test_accuracy_mean"] < 0.2


def test_grid_mistakes_found_late_still_get_one_line_naming_the_cell(tmp_path, mnist):
    from mnist_cnn.experiments import run_grid

    with pytest.raises(MnistCnnError, match=r"g\.toml: cell base: seed must be an integer, got '1'"):
        check_grid({"base": {"model": "mlp", "seed": "1"}}, "g.toml")
    grid = check_grid({"name": "late", "base": {"model": "mlp", "val_size": 5000}, "axes": {"lr": [1e-3, 2e-3]}})
    with pytest.raises(MnistCnnError, match=r"^late: cell lr=0\.001, seed 0: val_size=5000: expected a whole number "
                                            r"from 0 to 999"):  # the data's size is known only when it is loaded
        run_grid(grid, seeds=1, out=tmp_path / "late", data=mnist, overrides={"limit_train": 1000})
    with pytest.raises(MnistCnnError, match=r"--epochs 1 would replace the grid's axis 'epochs' \(\[1, 2\]\) in every "
                                            r"cell"):
        run_grid(check_grid({"axes": {"epochs": [1, 2]}}), out=tmp_path / "ep", overrides={"epochs": 1})
    assert check_grid({"axes": {"lr": (1e-3, 2e-3)}})["axes"]["lr"] == [1e-3, 2e-3]  # a tuple from Python


def test_cells_whose_names_would_clash_get_folders_of_their_own(tmp_path):
    from mnist_cnn.experiments import cell_folders, cell_slug

    a, b = {"model": "s a.toml"}, {"model": "s-a.toml"}
    assert cell_slug(a) == cell_slug(b)
    folders = cell_folders([a, b, {"model": "mlp"}])
    assert len(set(folders)) == 3 and folders[2] == "model-mlp"
    assert cell_folders([b, a]) == folders[1::-1]  # each cell's folder is its own, whatever the order


def test_spec_files_named_in_a_grid_are_found_beside_it(tmp_path, monkeypatch):
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "tiny.toml").write_text('[[layers]]\ntype = "Flatten"\n[[layers]]\ntype = "Dense"\n'
                                                  'units = 10\nactivation = "softmax"\n')
    (tmp_path / "grids" / "g.toml").write_text('[base]\nmodel = "tiny.toml"\n[axes]\nmodel = ["tiny.toml", "mlp"]\n')
    monkeypatch.chdir(tmp_path)
    grid = load_grid("grids/g.toml")
    assert grid["base"]["model"] == grid["axes"]["model"][0] == str(tmp_path.joinpath("grids", "tiny.toml")
                                                                     .relative_to(tmp_path))
    assert grid["axes"]["model"][1] == "mlp"


def test_the_validation_column_describes_the_weights_that_were_tested():
    from mnist_cnn.experiments import tested_row

    history = [{"epoch": 1, "val_loss": 0.5, "val_accuracy": 0.90}, {"epoch": 2, "val_loss": 0.3, "val_accuracy": 0.95},
               {"epoch": 3, "val_loss": 0.4, "val_accuracy": 0.95}, {"epoch": 4, "val_loss": 0.6, "val_accuracy": 0.80}]
    assert tested_row(history, {})["epoch"] == 4
    assert tested_row(history, {"restore_best": True})["epoch"] == 2  # val_loss is watched by default
    assert tested_row(history, {"restore_best": True, "monitor": "val_accuracy"})["epoch"] == 2  # the first best
    assert tested_row([], {"restore_best": True}) == {}
    # as training keeps best.safetensors: a gain of min_delta or less is no improvement
    assert tested_row(history, {"restore_best": True, "min_delta": 0.25})["epoch"] == 1


def test_an_interrupted_member_says_to_run_the_same_command_again(tmp_path, monkeypatch):
    import importlib

    from mnist_cnn import ensemble
    from mnist_cnn.errors import TrainingInterrupted
    from mnist_cnn.training import make_config

    def interrupted(config, data=None, **_):
        raise TrainingInterrupted(f"interrupted at step 3; continue with: mnist-cnn train --resume {config.out}",
                                  run_dir=config.out)

    monkeypatch.setattr(importlib.import_module("mnist_cnn.training"), "train", interrupted)
    with pytest.raises(TrainingInterrupted, match=r"interrupted while training .*m1, whose checkpoint is kept: run "
                                                  r"the same command again to continue") as e:
        ensemble.reuse_or_train(make_config(out=str(tmp_path / "m1")))
    assert "train --resume" not in str(e.value)
