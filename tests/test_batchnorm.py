"""BatchNorm after short training: Keras's moving statistics (momentum 0.99) cannot catch up with weights trained
a few hundred steps, so a short keras-bn run trains well and tests badly; `bn_recalibrate` re-estimates them on
training images before the run is saved and tested (training/batchnorm.py, docs/training.md)."""

import json

import pytest
import torch

from mnist_cnn.models import build_model
from mnist_cnn.runs import latest_checkpoint, load_tensors
from mnist_cnn.spec import parse_spec
from mnist_cnn.training import train
from mnist_cnn.training.batchnorm import batchnorm_layers, needs_recalibration, recalibrate, should_recalibrate

# 2,500 training images in batches of 64: 40 steps, the moving averages still 0.99**40 = 67% their initial values
SHORT = dict(model="keras-bn", epochs=1, limit_train=3000, val_size=500, limit_test=2000, verbose=0)


@pytest.fixture(scope="module")
def short_runs(mnist, tmp_path_factory):
    """The same short keras-bn run twice: with the default ("auto") and with Keras's behaviour ("off")."""
    out = tmp_path_factory.mktemp("bn")
    return {setting: train(data=mnist, out=str(out / setting), bn_recalibrate=setting, **SHORT)
            for setting in ("auto", "off")}


def test_a_short_batchnorm_run_tests_near_its_validation_accuracy(short_runs):
    auto, off = short_runs["auto"], short_runs["off"]
    record = auto.metrics["bn_recalibration"]
    assert auto.metrics["bn_recalibrated"] and not off.metrics["bn_recalibrated"]
    assert record["images"] == 2496 and record["steps"] == 40 and record["momentum"] == pytest.approx(0.99)
    # measured (2 cores): the moving statistics give 12.4% on validation and 11.7% on test, Keras's behaviour;
    # re-estimated, the same weights give 96.2% and 94.8% (the epoch's running train accuracy: 79.3%)
    assert record["val_accuracy_before"] == auto.history[-1]["val_accuracy"] == off.history[-1]["val_accuracy"]
    assert abs(auto.metrics["accuracy"] - record["val_accuracy_after"]) < 0.03
    assert auto.metrics["accuracy"] > off.metrics["accuracy"] + 0.5
    assert auto.config["bn_recalibrate"] == "auto"  # config.json records the setting


def test_only_the_moving_statistics_change_and_off_is_kerass_behaviour(short_runs):
    last = {k.removeprefix("model."): v for k, v in latest_checkpoint(short_runs["off"].path)[0].items()
            if k.startswith("model.")}  # the trained state, as training left it
    off, auto = (load_tensors(short_runs[s].path / "model.safetensors")[0] for s in ("off", "auto"))
    assert all(torch.equal(off[k], last[k]) for k in last)  # "off": saved exactly as trained, bit for bit
    moving = {k for k in last if k.endswith(("running_mean", "running_var"))}
    assert all(torch.equal(auto[k], last[k]) for k in last.keys() - moving)  # weights and step counts kept
    assert all(not torch.equal(auto[k], last[k]) for k in moving)
    assert json.loads((short_runs["auto"].path / "metrics.json").read_text())["bn_recalibration"]["steps"] == 40


def with_steps(model: torch.nn.Module, steps: int) -> torch.nn.Module:
    for layer in batchnorm_layers(model):
        layer.num_batches_tracked.fill_(steps)
    return model


def test_auto_recalibrates_while_the_first_half_of_training_weighs_in_the_moving_averages():
    # after n steps at momentum m the first half of training (the initial values included) still weighs
    # m ** (n / 2); auto acts above 1%
    keras_bn = build_model("keras-bn")  # Keras's momentum 0.99: 917 steps, about an epoch of MNIST in 64s
    assert needs_recalibration(keras_bn, steps=40) and needs_recalibration(keras_bn, steps=282)
    assert needs_recalibration(keras_bn, steps=564)  # the initial values alone weigh 0.3%, yet the test lags
    assert needs_recalibration(keras_bn, steps=916)  # 0.99 ** 458 = 1.002%
    assert not needs_recalibration(keras_bn, steps=917)  # 0.99 ** 458.5 = 0.997%
    assert not needs_recalibration(keras_bn, steps=5 * 938)  # the tutorial recipe: 5 epochs of 60,000 in 64s
    fast = build_model("fast-cnn")  # momentum 0.9: 88 steps; its recipe trains 469
    assert needs_recalibration(fast, steps=87) and not needs_recalibration(fast, steps=88)
    assert not needs_recalibration(fast, steps=469)
    assert needs_recalibration(with_steps(build_model("keras-bn"), 282))  # by default, the layers' own count
    assert not needs_recalibration(with_steps(build_model("keras-bn"), 4690))


def test_the_setting_auto_on_off():
    short, long = with_steps(build_model("keras-bn"), 282), with_steps(build_model("keras-bn"), 4690)
    assert should_recalibrate("auto", short) and not should_recalibrate("auto", long)
    assert should_recalibrate("on", long)
    assert not should_recalibrate("off", short)
    for setting in ("auto", "on", "off"):  # a model without BatchNorm has nothing to re-estimate
        assert not should_recalibrate(setting, build_model("keras-basic"))


def test_a_model_without_batchnorm_is_never_touched(mnist):
    model = build_model("keras-basic")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate(model, mnist.x_train[:256]) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def conv_dropout_bn() -> torch.nn.Module:
    return build_model(parse_spec({"name": "conv-dropout-bn", "input_shape": [28, 28, 1], "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 3}, {"type": "Dropout", "rate": 0.5},
        {"type": "BatchNormalization"}, {"type": "Flatten"}, {"type": "Dense", "units": 10}]}, "test"))


def test_recalibration_averages_whole_batches_of_the_final_weights_with_dropout_off(mnist):
    torch.manual_seed(0)
    model = with_steps(conv_dropout_bn(), 7)
    model.train()
    images = mnist.x_train[:1000]
    assert recalibrate(model, images, batch_size=64, limit=300) == 256  # 4 whole batches, spread over the 1,000
    bn = batchnorm_layers(model)[0]
    rows = torch.linspace(0, 999, 256).round().long()
    x = images[rows].float().div(255).unsqueeze(1)
    with torch.no_grad():
        features = model.layers[0](x)  # the conv, whose output the BatchNorm normalises (dropout off)
    assert torch.allclose(bn.running_mean, features.mean((0, 2, 3)), atol=1e-5)
    batch_vars = features.view(4, 64, *features.shape[1:]).var((1, 3, 4), unbiased=False)
    assert torch.allclose(bn.running_var, batch_vars.mean(0), rtol=1e-4)  # Keras's biased batch variance
    # kept: the momentum, the count of training steps, the caller's mode
    assert bn.momentum == pytest.approx(0.01) and int(bn.num_batches_tracked) == 7 and model.training
    again = with_steps(conv_dropout_bn(), 7)
    again.load_state_dict(model.state_dict())
    torch.manual_seed(1)  # no random draw (dropout's, the order's) changes the statistics
    recalibrate(again, images, batch_size=64, limit=300)
    assert torch.equal(again.state_dict()["layers.2.running_var"], bn.running_var)
