"""Training options: each declared once in training/config.py; the CLI's flags, their help and the Python API
all come from that declaration."""

import json
import subprocess
import sys

import pytest
import torch

from mnist_cnn import MnistCnnError, ModelSpec, load_run, make_config, parse_spec, predict_logits, train
from mnist_cnn.training.config import FIELDS, PLACEMENT, TrainConfig
from mnist_cnn.training.options import declaration, dest_of, shown_default
from mnist_cnn.zoo import MODELS


def train_parser():
    from mnist_cnn.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command")
    return commands.choices["train"]


def test_the_config_imports_without_torch():
    code = "import sys, mnist_cnn.training.config; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False"], done.stderr


def test_every_option_has_one_flag_whose_help_shows_its_declared_default():
    actions = train_parser()._actions
    recipe = MODELS["keras-basic"].recipe
    not_flags = {name for name, f in FIELDS.items() if not declaration(f).cli}
    compounds = {name: declaration(f).compound for name, f in FIELDS.items() if declaration(f).compound}
    assert not_flags == {"verbose", "spec"}  # Python only: how much to print, an architecture given as data
    assert compounds == {"model_options": ("kernel_size", "filters", "no_dropout"),
                         "augment": ("rotation", "shift", "shear", "zoom")}
    for name, f in FIELDS.items():
        if name in not_flags:
            continue
        for dest in compounds.get(name, (dest_of(f),)):
            flags = [a for a in actions if a.dest == dest]
            assert len(flags) == 1, dest
        if name in compounds:
            continue
        (action,) = flags
        if declaration(f).switch:  # the flag turns the default around: --restore-best, --no-cuda-graph
            assert action.option_strings == [("--no-" if f.default else "--") + name.replace("_", "-")]
        else:
            assert shown_default(f, recipe, "keras-basic") in action.help, name
    assert "(default: the recipe's; keras-basic 5)" in next(a for a in actions if a.dest == "epochs").help


def test_the_help_shows_the_declared_default_not_a_copy(monkeypatch):
    monkeypatch.setattr(FIELDS["lr_decay"], "default", 0.9)
    assert next(a for a in train_parser()._actions if a.dest == "lr_decay").help.endswith("(default 0.9)")


def test_placement_is_declared_once_and_ensembles_reuse_runs_across_it():
    from mnist_cnn.cli import _TRAIN_SETTINGS
    from mnist_cnn.flags import PLACEMENT_DESTS
    from mnist_cnn.reuse import _comparable

    assert PLACEMENT == ("threads", "device", "cuda_graph")
    assert PLACEMENT_DESTS == ("threads", "device", "no_cuda_graph") and set(PLACEMENT_DESTS) <= set(_TRAIN_SETTINGS)
    here = make_config(epochs=1).to_dict()
    moved = make_config(epochs=1, device="cpu", threads=1, cuda_graph=False).to_dict()
    assert _comparable(here) == _comparable(moved)  # a run finished elsewhere is the same member


def test_a_resume_from_python_takes_the_same_overrides_as_the_cli(mnist, tmp_path):
    run = train(epochs=1, limit_train=256, limit_test=64, out=str(tmp_path), verbose=0, data=mnist)
    again = train(data=mnist, resume=tmp_path, device="cpu", threads=1)
    assert again.history == run.history  # had finished: its saved length, not the default 5 epochs
    train(data=mnist, resume=tmp_path, epochs=2, cuda_graph=False)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["device"], config["threads"], config["cuda_graph"], config["epochs"]) == ("cpu", 1, False, 2)
    with pytest.raises(MnistCnnError, match=r"only epochs, threads, device and cuda_graph may be given with it, "
                                            r"got lr$"):
        train(data=mnist, resume=tmp_path, lr=0.5)


LAYERS = [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
          {"type": "MaxPooling2D", "pool_size": 2}, {"type": "Flatten"},
          {"type": "Dense", "units": 10, "activation": "softmax"}]


@pytest.mark.parametrize("model, name", [
    (LAYERS, "custom"),
    ({"name": "tiny", "layers": LAYERS}, "tiny"),
    (parse_spec({"name": "tiny-spec", "layers": LAYERS}), "tiny-spec"),
])
def test_a_model_given_as_data_trains_and_reloads_with_the_same_predictions(mnist, tmp_path, model, name):
    run = train(model=model, epochs=1, limit_train=512, limit_test=100, threads=1, out=str(tmp_path / "r"),
                verbose=0, data=mnist)
    config = json.loads((run.path / "config.json").read_text())
    assert config["model"] == name and json.loads((run.path / "spec.json").read_text())["name"] == name
    loaded = load_run(run.path)
    x = mnist.x_test[:200]
    assert torch.equal(predict_logits(run.model, x), predict_logits(loaded.model, x))
    assert isinstance(make_config(model=model).model_spec(), ModelSpec)


def test_a_spec_given_as_data_is_checked_when_the_config_is_made():
    with pytest.raises(MnistCnnError, match=r"model: layer 0 \(Dense\): missing required field 'units'"):
        make_config(model=[{"type": "Dense"}])
    with pytest.raises(MnistCnnError, match=r"model_options apply to named models"):
        make_config(model=LAYERS, model_options={"dropout": False})
    assert TrainConfig().spec is None


def test_a_run_saved_before_an_option_existed_compares_as_it_was_trained(tmp_path):
    import dataclasses

    from mnist_cnn.reuse import config_differences

    config = make_config(model="keras-basic", out=str(tmp_path / "old"))
    saved = config.to_dict()
    del saved["bn_recalibrate"]  # written by a version without the option, which never re-estimated
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    (tmp_path / "old" / "spec.json").write_text(json.dumps(config.model_spec().to_dict()))
    assert config_differences(dataclasses.replace(config, bn_recalibrate="off")) == []
    assert config_differences(config) == ["bn_recalibrate"]
