"""Training: reaches a stated accuracy on a real subset, is reproducible from a seed, saves and reloads exactly."""

import importlib
import json
import math
import re
import subprocess
import sys
from datetime import datetime

import pytest
import torch

from mnist_cnn import MnistCnnError, load_run, make_config, predict_logits, train
from mnist_cnn.evaluation import loss_and_accuracy
from mnist_cnn.runs import load_tensors, load_weights
from mnist_cnn.training.optim import KerasRMSprop, learning_rate, plateau_lr


def quick(tmp_path, name="run", **overrides):
    options = dict(epochs=1, limit_train=2000, limit_test=500, verbose=0, out=str(tmp_path / name))
    return make_config(**{**options, **overrides})


def test_keras_basic_reaches_95_percent_on_10k_images(mnist, tmp_path):
    run = train(quick(tmp_path, limit_train=10_000, limit_test=1_000, optimizer="adam", batch_size=32), mnist)
    assert run.metrics["accuracy"] >= 0.95
    assert run.metrics["count"] == 1_000


def test_an_epoch_ending_in_a_batch_of_one_trains_a_batch_norm_model(mnist, tmp_path):
    # 33 images in batches of 16 end with one image, which Keras trains on and nn.BatchNorm1d would refuse
    run = train(quick(tmp_path, model="keras-bn", limit_train=33, limit_test=100, batch_size=16), mnist)
    assert len(run.history) == 1 and run.metrics["count"] == 100


def timeless(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_same_seed_same_history_and_weights(mnist, tmp_path):
    a = train(quick(tmp_path, "a", seed=3, validation_split=0.1), mnist)
    b = train(quick(tmp_path, "b", seed=3, validation_split=0.1), mnist)
    assert timeless(a.history) == timeless(b.history)
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    c = train(quick(tmp_path, "c", seed=4, validation_split=0.1), mnist)
    assert timeless(c.history) != timeless(a.history)


def test_the_seed_draws_the_initial_weights(mnist, tmp_path):
    # one training image, so that the order cannot differ: only the initial weights can tell the seeds apart
    a, b = (train(quick(tmp_path, str(seed), seed=seed, limit_train=1), mnist) for seed in (3, 4))
    assert not torch.equal(a.model.layers[0][0].weight, b.model.layers[0][0].weight)


def test_each_epoch_draws_its_own_order(mnist, tmp_path, monkeypatch):
    orders, randperm = [], torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: orders.append(randperm(*a, **k)) or orders[-1])
    train(quick(tmp_path, epochs=2, limit_train=256), mnist)
    assert len(orders) == 2 and not torch.equal(*orders)


def test_run_directory_reloads_to_identical_predictions(mnist, tmp_path):
    run = train(quick(tmp_path, validation_split=0.2), mnist)
    for name in ("model.safetensors", "config.json", "spec.json", "history.json", "history.csv", "metrics.json"):
        assert (run.path / name).exists(), name
    loaded = load_run(run.path)
    x = mnist.x_test[:300]
    assert torch.equal(predict_logits(run.model, x), predict_logits(loaded.model, x))
    assert loaded.metrics["accuracy"] == run.metrics["accuracy"]
    assert loaded.history[0]["val_accuracy"] == run.history[0]["val_accuracy"]
    assert json.loads((run.path / "config.json").read_text())["validation_split"] == 0.2
    header = (run.path / "history.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,loss,accuracy,val_loss,val_accuracy")


def test_tutorial_recipes_are_the_defaults():
    assert (make_config().model, make_config().optimizer, make_config().batch_size) == ("keras-basic", "rmsprop", 64)
    dropout = make_config(model="keras-dropout")
    assert (dropout.optimizer, dropout.batch_size, dropout.epochs, dropout.val_size) == ("adam", 500, 20, 5000)
    assert make_config(model="keras-bn").augment["rotation"] == 8
    assert make_config(model="keras-dropout", epochs=2).epochs == 2  # flags override the recipe


@pytest.mark.parametrize("options, message", [
    ({"epochs": 0}, r"--epochs must be a positive integer, got 0"),
    ({"batch_size": -5}, r"--batch-size must be a positive integer, got -5"),
    ({"optimizer": "adagrad"}, r"--optimizer must be one of rmsprop, adam, sgd, got 'adagrad'"),
    ({"lr": -1.0}, r"--lr must be in \(0, 10\), got -1.0"),
    ({"early_stopping": 2}, r"--early-stopping needs a validation set"),
    ({"schedule": "plateau", "restore_best": True}, r"--restore-best needs a validation set"),
    ({"augment": {"rotation": -3}}, r"augment rotation=-3"),
    ({"recipe": "turbo"}, r"unknown recipe 'turbo'"),
    ({"early_stopping": True, "val_size": 100}, r"--early-stopping must be a positive patience, got True"),
    ({"min_delta": -0.1, "early_stopping": 2, "val_size": 100},
     r"--min-delta must be a finite number >= 0, got -0.1"),
    ({"validation_split": "0.1"}, r"--validation-split must be a fraction in \[0, 1\), got '0.1'"),
    ({"out": 3}, r"--out must be a folder's path, got 3"),
    ({"model": torch.nn.Linear(784, 10)}, r"model must be a name, a spec file's path, a ModelSpec, a list of layers "
                                          r"or a spec dict, got Linear\("),
])
def test_bad_options_are_refused_with_the_value(options, message):
    # as the CLI prints them: options named by their flags
    with pytest.raises(MnistCnnError) as error:
        make_config(**options)
    assert re.search(message, as_cli_says(error.value))


def as_cli_says(error: MnistCnnError) -> str:
    from mnist_cnn.flags import flag_name
    from mnist_cnn.training.options import OptionError

    return error.as_flags(flag_name) if isinstance(error, OptionError) else str(error)


def test_python_names_options_as_python_does_and_the_cli_as_flags(capsys):
    from mnist_cnn.cli import main

    with pytest.raises(MnistCnnError, match=r"^epochs must be a positive integer, got 0$"):
        make_config(epochs=0)
    with pytest.raises(MnistCnnError, match=r"^early_stopping needs a validation set: add validation_split or "
                                            r"val_size$"):
        make_config(early_stopping=2)
    with pytest.raises(MnistCnnError, match=r"^recipe fast trains fast-cnn; give recipe or model keras-basic, not "
                                            r"both$"):
        make_config(recipe="fast", model="keras-basic")
    assert main(["train", "--early-stopping", "2"]) == 2
    assert capsys.readouterr().err == ("error: --early-stopping needs a validation set: add --validation-split or "
                                       "--val-size\n")


def test_python_values_a_notebook_has_are_taken_and_its_state_is_left_alone(mnist, tmp_path):
    import numpy as np

    config = quick(tmp_path, out=tmp_path / "as-path", batch_size=np.int64(32), seed=np.arange(3)[2],
                   lr=np.float32(1e-3))
    assert (config.batch_size, config.seed, config.lr) == (32, 2, pytest.approx(1e-3))
    assert type(config.batch_size) is int and type(config.lr) is float  # as config.json holds them
    torch.set_num_threads(1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run = train(config, mnist)
    assert json.loads((run.path / "config.json").read_text())["out"] == str(tmp_path / "as-path")
    # threads and random state as they were
    assert torch.get_num_threads() == 1 and torch.equal(torch.rand(3), expected)
    torch.set_num_threads(2)


def assert_ends_with_the_best_weights(run, epoch: int) -> None:
    """best.safetensors holds epoch `epoch`'s weights, and --restore-best ended the run with them."""
    assert load_tensors(run.path / "best.safetensors")[1]["epoch"] == epoch
    kept = load_weights(run.path / "best.safetensors").state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in run.model.state_dict().items())


def test_early_stopping_keeps_the_best_epoch_and_stops_patience_epochs_after_it(mnist, tmp_path):
    run = train(quick(tmp_path, epochs=8, limit_train=600, validation_split=0.5, early_stopping=1,
                      restore_best=True, device="cpu"), mnist)  # the CPU's numbers: a GPU's stop elsewhere
    losses = [row["val_loss"] for row in run.history]
    best = losses.index(min(losses)) + 1
    assert 1 < best < len(losses) < 8  # the case worth testing: measured best epoch 4 of 5
    assert len(losses) == best + 1  # patience 1: the first epoch without improvement stops
    assert_ends_with_the_best_weights(run, best)


def test_an_improvement_is_larger_than_min_delta_as_in_keras_early_stopping():
    from mnist_cnn.training.optim import improved

    assert improved(0.9, None, "val_loss") and improved(0.0, None, "val_accuracy", 0.5)  # the first epoch is the best
    assert improved(0.49, 0.5, "val_loss") and not improved(0.5, 0.5, "val_loss")
    assert improved(0.51, 0.5, "val_accuracy") and not improved(0.5, 0.5, "val_accuracy")
    assert not improved(0.495, 0.5, "val_loss", 0.01) and improved(0.489, 0.5, "val_loss", 0.01)
    assert not improved(0.505, 0.5, "val_accuracy", 0.01) and improved(0.511, 0.5, "val_accuracy", 0.01)


def test_min_delta_stops_after_patience_epochs_without_a_large_enough_gain(mnist, tmp_path):
    # no epoch can beat the first one's accuracy by a whole 1.0: training stops after 1 + patience epochs
    said = []
    run = train(quick(tmp_path, epochs=6, limit_train=600, val_size=200, early_stopping=2, min_delta=1.0,
                      monitor="val_accuracy", restore_best=True, verbose=1), mnist, log=said.append)
    assert [row["epoch"] for row in run.history] == [1, 2, 3]
    assert "Early stopping: val_accuracy did not improve by more than 1 for 2 epochs" in said
    assert_ends_with_the_best_weights(run, 1)


def test_keras_rmsprop_matches_the_keras_formula():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = KerasRMSprop([w], lr=0.1)
    w.grad = torch.tensor([0.5, 1e-4])
    opt.step()
    v = 0.1 * torch.tensor([0.5, 1e-4]) ** 2
    expected = torch.tensor([1.0, -2.0]) - 0.1 * torch.tensor([0.5, 1e-4]) / torch.sqrt(v + 1e-7)
    assert torch.allclose(w.detach(), expected)


def test_keras_adam_matches_the_keras_formula_at_every_step():
    # Keras: w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps), eps added BEFORE the bias correction
    from mnist_cnn.training.optim import make_optimizer

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = make_optimizer("adam", [w], 0.01)
    expected, m, v = w.detach().clone(), torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for t, g in enumerate([[0.5, 1e-6, 1e-8], [-0.3, 2e-6, 1e-8], [0.1, -1e-6, 3e-8]], start=1):
        g = torch.tensor(g, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        expected -= 0.01 * (1 - 0.999 ** t) ** 0.5 / (1 - 0.9 ** t) * m / (v.sqrt() + 1e-7)
        assert torch.allclose(w.detach(), expected, rtol=1e-12, atol=1e-15), t


def test_learning_rate_schedules():
    assert learning_rate("constant", 0.1, 500, 100, 1000) == 0.1
    assert learning_rate("exponential", 1.0, 250, 100, 1000) == pytest.approx(0.95 ** 2)
    assert learning_rate("exponential", 1.0, 99, 100, 1000) == 1.0  # the whole first epoch at the base rate
    assert learning_rate("exponential", 1.0, 100, 100, 1000) == pytest.approx(0.95)
    assert learning_rate("cosine", 1.0, 500, 100, 1000) == pytest.approx(0.5)
    assert learning_rate("onecycle", 1.0, 250, 100, 1000) == pytest.approx(1.0)
    assert learning_rate("onecycle", 1.0, 0, 100, 1000) == pytest.approx(0.1)
    assert learning_rate("onecycle", 1.0, 125, 100, 1000) == pytest.approx(0.55)  # half-way up, linearly
    assert learning_rate("onecycle", 1.0, 625, 100, 1000) == pytest.approx(0.5)  # half-way down, linearly


# scores and the rate after each epoch as Keras 3.15's ReduceLROnPlateau gave them (from lr 1.0; mode min for
# val_loss, max for val_accuracy, as Keras infers it once the model has metrics)
KERAS_PLATEAUS = [
    ("val_accuracy", dict(factor=0.1, patience=2, min_delta=0.01, cooldown=2, min_lr=0.001),
     [0.5, 0.5, 0.673, 0.5, 0.676, 0.5, 0.251, 0.5, 0.175, 0.41, 0.5, 0.5, 0.357, 0.5, 0.561],
     [1, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.001, 0.001]),
    ("val_loss", dict(factor=0.1, patience=2, min_delta=0.01, cooldown=1, min_lr=0.05),
     [0.5, 0.749, 0.5, 0.5, 0.5, 0.5, 0.5, 0.538, 0.587, 0.151, 0.79, 0.5, 0.621, 0.164, 0.5],
     [1, 1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]),
    ("val_accuracy", dict(factor=0.1, patience=3, min_delta=0.05, cooldown=1, min_lr=0.0),
     [0.778, 0.598, 0.324, 0.5, 0.5, 0.783, 0.5, 0.06, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.849],
     [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.0001, 0.0001, 0.0001]),
    ("val_loss", dict(factor=0.5, patience=0, min_delta=0.01, cooldown=1, min_lr=0.05),
     [0.878, 0.713, 0.421, 0.5, 0.925, 0.5, 0.5, 0.34], [1, 1, 1, 0.5, 0.25, 0.125, 0.0625, 0.0625]),
]


@pytest.mark.parametrize("monitor, keras, scores, rates", KERAS_PLATEAUS)
def test_plateau_schedule_is_keras_reduce_lr_on_plateau(monitor, keras, scores, rates):
    ours = [plateau_lr(1.0, scores[:epoch], monitor, keras["factor"], keras["patience"], keras["min_delta"],
                       keras["cooldown"], keras["min_lr"]) for epoch in range(1, len(scores) + 1)]
    assert ours == pytest.approx(rates, rel=1e-6)  # Keras keeps the rate in float32


def test_plateau_schedule_lowers_the_rate_in_training_and_says_so(mnist, tmp_path):
    # no epoch beats the first one's accuracy by a whole 1.0: with patience 1, every later epoch halves the rate
    said = []
    run = train(quick(tmp_path, epochs=4, limit_train=600, val_size=200, schedule="plateau", monitor="val_accuracy",
                      lr_factor=0.5, lr_patience=1, lr_min_delta=1.0, verbose=1), mnist, log=said.append)
    assert [row["lr"] for row in run.history] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])
    assert "Epoch 2: ReduceLROnPlateau reducing learning rate to 0.0005" in said


def test_augmentation_reaches_the_model_and_repeats_with_the_seed(mnist, tmp_path):
    plain = train(quick(tmp_path, "plain", seed=1), mnist)
    spun = train(quick(tmp_path, "spun", seed=1, augment={"rotation": 180}), mnist)
    again = train(quick(tmp_path, "again", seed=1, augment={"rotation": 180}), mnist)
    # measured 0.24 against 0.54: digits turned to any angle are harder to learn, so the model saw them turned
    assert spun.history[0]["accuracy"] < plain.history[0]["accuracy"] - 0.1
    assert timeless(spun.history) == timeless(again.history)
    still = train(quick(tmp_path, "still", seed=1, augment={"rotation": 0}), mnist)
    assert timeless(still.history) == timeless(plain.history)  # ranges of zero leave the images untouched


def test_validation_scores_the_weight_average_that_is_evaluated(mnist, tmp_path):
    # with --ema, val_loss (and so early stopping and best.safetensors) must judge the model that is kept
    run = train(quick(tmp_path, limit_train=600, val_size=200, ema=0.9), mnist)
    loss, _ = loss_and_accuracy(predict_logits(run.model, mnist.x_train[400:600]), mnist.y_train[400:600])
    assert run.history[0]["val_loss"] == pytest.approx(loss, rel=1e-5)


def test_label_smoothing_and_weight_decay_reach_the_training(mnist, tmp_path):
    plain = train(quick(tmp_path, "plain", limit_train=256), mnist)
    smoothed = train(quick(tmp_path, "smoothed", limit_train=256, label_smoothing=0.1), mnist)
    decayed = train(quick(tmp_path, "decayed", limit_train=256, weight_decay=0.5), mnist)
    assert smoothed.history[0]["loss"] > plain.history[0]["loss"]  # smoothed targets: a higher cross-entropy

    def norm(run):
        return sum(p.square().sum() for p in run.model.parameters())

    assert norm(decayed) < norm(plain)


def test_a_relative_data_path_is_recorded_absolute(tmp_path, monkeypatch):
    # so that `evaluate RUN` finds the data from any folder
    monkeypatch.chdir(tmp_path)
    assert make_config(data="fashion.npz").data == str(tmp_path / "fashion.npz")
    assert make_config().data is None  # the bundled MNIST


def test_runs_started_in_the_same_second_get_their_own_default_folders(mnist, tmp_path, monkeypatch):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(importlib.import_module("mnist_cnn.training.loop"), "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    paths = [train(quick(tmp_path, limit_train=64, limit_test=10, out=None, threads=1), mnist).path
             for _ in range(3)]
    assert [p.name for p in paths] == ["keras-basic-20260102-030405", "keras-basic-20260102-030405-2",
                                       "keras-basic-20260102-030405-3"]


def test_training_never_imports_torchs_compiler_stack(tmp_path):
    # torch.optim's optimisers import torch._dynamo at their first use: 1.07 s of every command's start-up
    code = ("import sys; from mnist_cnn import load_mnist, train\n"
            "data = load_mnist()\n"
            "for opt in ('adam', 'rmsprop', 'sgd'):\n"
            f"    train(optimizer=opt, epochs=1, limit_train=256, limit_test=64, verbose=0, out=r'{tmp_path}/' + opt,"
            " data=data)\n"
            "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_sgd_and_a_checkpoint_of_torchs_own_adam_load_and_step_as_before():
    from mnist_cnn.training.optim import make_optimizer

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    w.grad = torch.tensor([0.5, -1.0])
    make_optimizer("sgd", [w], 0.1).step()
    assert torch.equal(w.detach(), torch.tensor([0.95, -1.9]))
    # checkpoints written before our own optimiser classes hold torch's Adam state_dict; it must continue exactly
    theirs, ours = torch.nn.Parameter(w.detach().clone()), torch.nn.Parameter(w.detach().clone())
    reference = torch.optim.Adam([theirs], lr=0.01, eps=1e-7, fused=True)
    theirs.grad = w.grad.clone()
    reference.step()
    ours.data.copy_(theirs.detach())
    adam = make_optimizer("adam", [ours], 0.01)
    adam.load_state_dict({**reference.state_dict(), "param_groups": [{**reference.param_groups[0], "params": [0],
                                                                       "t": 1}]})
    assert adam.state[ours]["step"].item() == 1.0 and adam.state_dict()["state"][0]["exp_avg"].shape == (2,)
    ours.grad = theirs.grad = torch.tensor([0.1, 0.2])
    adam.step()
    reference.param_groups[0]["eps"] = 1e-7 / math.sqrt(1 - 0.999 ** 2)  # Keras's eps at step 2, as KerasAdam did
    reference.step()
    assert torch.equal(ours.detach(), theirs.detach())
