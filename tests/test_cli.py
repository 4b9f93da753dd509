"""The CLI in-process: every command is a thin layer over the API; user mistakes are one line, exit 2."""

import json
import subprocess
import sys

import pytest

from mnist_cnn.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_and_summary(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "keras-basic" in out and "93,322" in out
    assert "augment rotation 8 width_shift 0.08" in out  # keras-bn's recipe augments
    assert "  best         model deotte, optimizer adam, lr 0.002, schedule onecycle" in out  # recipes beyond models
    code, out, _ = run_cli(capsys, "summary", "keras-bn")
    assert code == 0 and "Total params: 597,738" in out
    code, out, _ = run_cli(capsys, "summary", "keras-dropout", "--kernel-size", "3", "--json")
    assert json.loads(out.splitlines()[-1])["total"] == 1_199_882


def test_models_name_their_options_and_each_has_a_flag(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert "dropout 0.25/0.5 (options: --kernel-size N, --no-dropout)" in out
    assert "dropout 0.4 (options: --filters N, --no-dropout)" in out
    assert len({line.index("optimizer") for line in out.splitlines() if " params  tutorial " in line}) == 1  # a column
    code, out, _ = run_cli(capsys, "models", "--json")
    assert {r["name"]: r["options"] for r in json.loads(out)}["deotte"] == ["filters", "dropout"]
    code, out, _ = run_cli(capsys, "summary", "deotte", "--filters", "64", "--json")  # Keras: 1,301,642 / 1,664
    summary = json.loads(out)
    assert (summary["total"], summary["non_trainable"]) == (1_301_642, 1_664)
    code, _, err = run_cli(capsys, "summary", "keras-basic", "--filters", "64")
    assert code == 2 and "model 'keras-basic' has no option 'filters'" in err


def test_train_then_evaluate(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", "--epochs", "1", "--limit-train", "1000", "--limit-test", "200",
                           "--validation-split", "0.1", "--out", str(out_dir), "--json")
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["run_dir"] == str(out_dir) and result["params"] == 93_322
    assert set(result["history"][0]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    code, out, _ = run_cli(capsys, "evaluate", str(out_dir), "--json")  # the run's own 200 test images
    metrics = json.loads(out.splitlines()[-1])
    assert code == 0 and metrics["accuracy"] == result["test_accuracy"] and metrics["count"] == 200
    assert metrics["accuracy"] == (200 - metrics["errors"]) / 200  # exactly: 0.895, not float32's 0.89499998
    assert len(metrics["confusion"]) == 10 and len(metrics["per_class"]) == 10
    code, out, _ = run_cli(capsys, "evaluate", str(out_dir), "--limit-test", "200")
    assert "confusion matrix" in out and "precision" in out
    code, out, _ = run_cli(capsys, "export", str(out_dir), "--out", str(tmp_path / "m.safetensors"), "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["format"] == "safetensors"  # told by the suffix


@pytest.mark.parametrize("argv, message", [
    (["summary", "nope"], "error: unknown model 'nope'"),
    (["train", "--epochs", "0"], "error: --epochs must be a positive integer, got 0"),
    (["train", "--threads", "100000"], "error: --threads must be at most"),
    (["train", "--data", "/no/such/dir"], "/no/such/dir"),
    (["evaluate", "/no/such/run"], "error: /no/such/run does not exist: expected a run or ensemble directory"),
    (["report", "/no/such/run"], "error: /no/such/run does not exist: expected a run directory or its "
                                  "model.safetensors"),
])
def test_user_mistakes_are_one_line(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_lr_decay_sets_the_exponential_schedules_factor(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "train", "--epochs", "2", "--limit-train", "128", "--limit-test", "64",
                           "--schedule", "exponential", "--lr-decay", "0.5", "--out", str(tmp_path / "r"), "--json")
    assert code == 0
    first, second = json.loads(out.strip().splitlines()[-1])["history"]
    assert second["lr"] == first["lr"] * 0.5


def test_the_layout_and_graph_switches_reach_the_run(capsys, tmp_path):
    code, _, _ = run_cli(capsys, "train", "--epochs", "1", "--limit-train", "64", "--limit-test", "64",
                         "--no-channels-last", "--no-cuda-graph", "--out", str(tmp_path / "r"))
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert code == 0 and config["channels_last"] is False and config["cuda_graph"] is False


def test_piping_train_into_head_neither_prints_a_traceback_nor_loses_the_run(tmp_path):
    # `mnist-cnn train | head -1`: the reader goes away after one line; training must go on, silently
    train = subprocess.Popen([sys.executable, "-m", "mnist_cnn", "train", "--epochs", "2", "--limit-train", "500",
                              "--limit-test", "100", "--out", str(tmp_path / "r")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert train.stdout.readline().startswith("Training keras-basic")
    train.stdout.close()
    assert train.wait(timeout=300) == 0
    assert "Traceback" not in train.stderr.read()
    assert len(json.loads((tmp_path / "r" / "history.json").read_text())) == 2
    assert (tmp_path / "r" / "model.safetensors").exists()


_CTRL_C_IN_TORCH = """
import sys
class CtrlC:  # a Ctrl-C that lands while torch is being imported, the slowest moment of a command's start
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
from mnist_cnn.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:  # argparse's --help and usage errors
    code = e.code
print("torch imported" if "torch" in sys.modules else "torch not imported")
sys.exit(code)
"""


@pytest.mark.parametrize("argv, code, out, err", [
    (["--help"], 0, "torch not imported", ""),  # help and usage errors answer without importing torch
    (["train", "--epochs", "x"], 2, "torch not imported", "--epochs: invalid int value: 'x'"),
    (["train", "--epochs", "1"], 130, "torch not imported", "interrupted")])  # no traceback from inside the import
def test_help_usage_errors_and_an_early_ctrl_c_are_answered_before_torch_is_imported(argv, code, out, err):
    done = subprocess.run([sys.executable, "-c", _CTRL_C_IN_TORCH, *argv], capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout.splitlines()[-1]) == (code, out)
    assert err in done.stderr and "Traceback" not in done.stderr


def test_every_public_name_is_there_on_first_use():
    import importlib.util

    import mnist_cnn
    import mnist_cnn.evaluation  # the metrics module: `evaluate` stays the function

    assert callable(mnist_cnn.evaluate) and set(mnist_cnn.__all__) == set(mnist_cnn.PUBLIC)
    # no module shares a public function's name
    assert [name for name in mnist_cnn.__all__ if importlib.util.find_spec(f"mnist_cnn.{name}")] == []

    assert all(getattr(mnist_cnn, name) is not None for name in mnist_cnn.__all__)
    assert set(mnist_cnn.__all__) <= set(dir(mnist_cnn))
    with pytest.raises(AttributeError, match="module 'mnist_cnn' has no attribute 'trian'"):
        _ = mnist_cnn.trian
    done = subprocess.run([sys.executable, "-c", "import mnist_cnn; print(mnist_cnn.runs.load_weights.__name__)"],
                          capture_output=True, text=True, timeout=120)  # submodules too, in a fresh process
    assert done.stdout.split() == ["load_weights"], done.stderr


def test_resume_refuses_every_train_setting_but_epochs():
    # a new train flag must join _TRAIN_SETTINGS, or --resume would ignore it without a word
    from mnist_cnn.cli import _TRAIN_SETTINGS, build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command")
    flags = {a.dest for a in commands.choices["train"]._actions} - {"help", "json", "resume", "epochs"}
    assert flags == set(_TRAIN_SETTINGS)


def test_resume_refuses_a_setting_given_as_zero(capsys, tmp_path):
    run = str(tmp_path / "r")
    assert run_cli(capsys, "train", "--epochs", "1", "--limit-train", "128", "--limit-test", "64", "--seed", "7",
                   "--out", run)[0] == 0
    code, _, err = run_cli(capsys, "train", "--resume", run, "--seed", "0", "--epochs", "2")
    assert code == 2 and "may be given with it, got --seed" in err  # 0 == False must not hide it


def test_a_resume_may_move_the_run_and_keeps_its_length_unless_told(capsys, tmp_path):
    run = str(tmp_path / "r")
    assert run_cli(capsys, "train", "--epochs", "1", "--limit-train", "128", "--limit-test", "64", "--out", run)[0] == 0
    code, out, _ = run_cli(capsys, "train", "--resume", run, "--device", "cpu", "--threads", "1")
    assert code == 0 and "had finished training (1 epoch)" in out  # not the default 5 epochs
    code, out, _ = run_cli(capsys, "train", "--resume", run, "--epochs", "2", "--no-cuda-graph")
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert code == 0 and "Resuming" in out and "Epoch 2/2" in out
    assert (config["device"], config["threads"], config["cuda_graph"], config["epochs"]) == ("cpu", 1, False, 2)


def test_json_output_is_strict_json_even_for_nan(capsys):
    from mnist_cnn.cli import _print_json

    _print_json({"test_loss": float("nan"), "history": [{"val_loss": float("inf")}, {"val_loss": 0.5}]})
    line = capsys.readouterr().out

    def refuse(word):
        raise ValueError(f"not strict JSON: {word}")

    assert json.loads(line, parse_constant=refuse) == {"test_loss": None, "history": [{"val_loss": None},
                                                                                        {"val_loss": 0.5}]}


def test_a_run_remembers_its_data_and_says_when_it_has_moved(capsys, tmp_path, mnist):
    # trained from Python on data loaded from a file: every command afterwards tests on that file's test set
    from mnist_cnn.data import MnistData, load_mnist, write_npz
    from mnist_cnn.training import make_config, train

    flipped = MnistData(mnist.x_train[:600], mnist.y_train[:600], 255 - mnist.x_test[:100], mnist.y_test[:100],
                        source="")
    data = load_mnist(write_npz(tmp_path / "inverted.npz", flipped))
    run = train(make_config(epochs=1, out=str(tmp_path / "run"), verbose=0), data, log=lambda _: None)
    assert json.loads((run.path / "config.json").read_text())["data"] == str(tmp_path / "inverted.npz")
    code, out, _ = run_cli(capsys, "evaluate", str(run.path), "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["count"] == 100  # not the bundled 10,000

    (tmp_path / "inverted.npz").rename(tmp_path / "moved.npz")
    for argv in (["evaluate", str(run.path)], ["report", str(run.path)], ["explain", str(run.path), "--index", "0"],
                 ["export", str(run.path), "--out", str(tmp_path / "m.pt")]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "inverted.npz: no such file" in err and "give --data where it is now" in err, argv
        code, out, _ = run_cli(capsys, *argv, "--data", str(tmp_path / "moved.npz"))
        assert code == 0, argv

    by_hand = train(make_config(epochs=1, out=str(tmp_path / "run2"), verbose=0), flipped, log=lambda _: None)
    code, _, err = run_cli(capsys, "evaluate", str(by_hand.path))
    assert code == 2 and "(data given in memory, source '')" in err and "give --data" in err


def test_evaluate_and_export_take_a_test_set_alone(capsys, tmp_path, trained_run, mnist):
    # a folder with only the two t10k files: all that testing a trained model needs
    from mnist_cnn.data import IDX_NAMES
    from mnist_cnn.idx import write_idx

    for key in ("x_test", "y_test"):
        write_idx(tmp_path / "t10k" / IDX_NAMES[key], getattr(mnist, key)[:600].byte().numpy())
    code, out, _ = run_cli(capsys, "evaluate", str(trained_run.path), "--limit-test", "600", "--json")
    own = json.loads(out.splitlines()[-1])
    t10k = ["--data", str(tmp_path / "t10k")]
    code, out, err = run_cli(capsys, "evaluate", str(trained_run.path), *t10k, "--json")
    assert code == 0, err
    alone = json.loads(out.splitlines()[-1])
    assert alone["count"] == own["count"] == 600 and alone["accuracy"] == own["accuracy"]
    code, out, err = run_cli(capsys, "export", str(trained_run.path), "--out", str(tmp_path / "m.onnx"), *t10k)
    assert code == 0 and "on 600 test images" in out, err
    code, out, err = run_cli(capsys, "report", str(trained_run.path), "--out", str(tmp_path / "r.html"), *t10k)
    assert code == 0 and "of 600</td>" in (tmp_path / "r.html").read_text(), err  # the given data, not the run's own
    code, _, err = run_cli(capsys, "explain", str(trained_run.path), "--index", "700", *t10k)
    assert code == 2 and "test index 700 is out of range: the test set has 600 images" in err


def test_version_and_a_missing_extra_get_one_line(capsys, monkeypatch, trained_run):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("mnist-cnn ")
    monkeypatch.delitem(sys.modules, "mnist_cnn.serve", raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if installed without the 'serve' extra
    code, _, err = run_cli(capsys, "serve", str(trained_run.path))
    assert code == 2 and err == "error: serve needs the 'serve' extra (fastapi is not installed): pip install " \
                               "'mnist-cnn[serve]'\n"


def test_every_option_says_what_it_does_and_the_defaults_it_names_are_the_real_ones():
    import re

    from mnist_cnn.cli import build_parser
    from mnist_cnn.training import TrainConfig
    from mnist_cnn.zoo import MODELS

    commands = next(a for a in build_parser()._actions if a.dest == "command")
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"mnist-cnn {name} {'/'.join(action.option_strings) or action.dest} has no help"
    for action in commands.choices["train"]._actions:
        m = re.search(r"default:? ([\w.+-]+)\)", action.help)  # "(default 0.95)": TrainConfig's value
        if m and action.dest in TrainConfig.__dataclass_fields__:
            value = getattr(TrainConfig, action.dest)
            assert m[1] == value if isinstance(value, str) else float(m[1]) == value, action.dest
        if m := re.search(r"the recipe's; keras-basic (\w+)\)", action.help):  # the default model's recipe
            assert m[1] == str(MODELS["keras-basic"].recipe[action.dest]), action.dest
