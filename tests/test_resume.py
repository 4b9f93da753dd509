"""Interrupted training loses nothing: kill -9 at a random step, resume, and end bit for bit where an
uninterrupted run ends; damaged checkpoints are skipped; a full disk leaves the previous checkpoint intact."""

import dataclasses
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from mnist_cnn import MnistCnnError, make_config, train
from mnist_cnn.errors import TrainingInterrupted
from mnist_cnn.runs import checkpoint_paths, latest_checkpoint, load_tensors
from mnist_cnn.training.optim import KerasAdam, KerasRMSprop

SPEC = str(Path(__file__).parents[1] / "examples" / "small-bn.toml")
# batch norm, dropout, augmentation, EMA and a schedule: every kind of state a resume must restore
ARGS = ["--model", SPEC, "--optimizer", "adam", "--epochs", "3", "--batch-size", "32", "--limit-train", "2000",
        "--limit-test", "200", "--validation-split", "0.1", "--rotation", "10", "--shift", "0.1",
        "--ema", "0.9", "--schedule", "cosine", "--seed", "7", "--threads", "1", "--checkpoint-every", "5"]


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mnist_cnn", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_tensors(run_dir / "model.safetensors")[0]


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    full = cli(*ARGS, "--out", str(tmp_path / "full"))
    victim = cli(*ARGS, "--out", str(tmp_path / "victim"))
    # kill at a random step of the run: once a checkpoint at or past that step exists (171 steps in all)
    target = random.randint(10, 120)
    deadline = time.time() + 120
    while time.time() < deadline:
        steps = [int(p.stem.split("-")[1]) for p in checkpoint_paths(tmp_path / "victim")]
        if steps and max(steps) >= target:
            break
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert full.wait(timeout=300) == 0, full.stderr.read()
    if (tmp_path / "victim" / "model.safetensors").exists():
        pytest.skip("the run finished before the kill landed")
    resumed = cli("--resume", str(tmp_path / "victim"))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "Resuming" in out
    histories = [json.loads((tmp_path / name / "history.json").read_text()) for name in ("full", "victim")]
    assert untimed(histories[0]) == untimed(histories[1])
    a, b = weights(tmp_path / "full"), weights(tmp_path / "victim")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, signum, status):
    # the exit status is the shell's 128 + signal, so a scheduler sees that its SIGTERM stopped the run
    run = cli(*ARGS, "--out", str(tmp_path / "r"))
    deadline = time.time() + 120
    while not checkpoint_paths(tmp_path / "r") and time.time() < deadline:
        time.sleep(0.05)
    run.send_signal(signum)
    _, err = run.communicate(timeout=60)
    if run.returncode == 0:
        pytest.skip("the run finished before the signal landed")
    assert run.returncode == status
    assert f"mnist-cnn train --resume {tmp_path / 'r'}" in err and "Traceback" not in err


# the plateau schedule halves the rate after every epoch but the first (none beats it by 1.0): the third epoch,
# interrupted at its 11th step (576 images, batch 32), must resume at the rate the first two gave
PLATEAU = dict(epochs=3, val_size=64, schedule="plateau", monitor="val_accuracy", lr_factor=0.5, lr_patience=0,
               lr_min_delta=1.0)


def after_each_update(monkeypatch, optimizer: type, then) -> None:
    """Call `then()` right after each weight update of the `optimizer` class."""
    step = optimizer.step

    def step_then(self):
        step(self)
        then()

    monkeypatch.setattr(optimizer, "step", step_then)


@pytest.mark.parametrize(("model", "at", "extra"), [(SPEC, 7, {}), (SPEC, 20, {}), ("keras-basic", 7, {}),
                                                    (SPEC, 47, PLATEAU)],
                         ids=["mid-epoch", "epoch-end", "multi-channel-convs", "plateau-schedule"])
def test_ctrl_c_right_after_a_weight_update_still_resumes_bit_for_bit(mnist, tmp_path, model, at, extra, monkeypatch):
    # a checkpoint written from inside the step would pair the new weights with the old step count;
    # 20 is the first epoch's last step (640 images, batch 32), whose row must not be lost;
    # keras-basic's 32- and 64-channel conv kernels are channels-last, and so must Adam's state be after a resume
    options = {**dict(model=model, optimizer="adam", epochs=2, batch_size=32, limit_train=640, limit_test=64, seed=3,
                      verbose=0, threads=1), **extra}
    full = train(make_config(**options, out=str(tmp_path / "full")), mnist)
    assert len({row["lr"] for row in full.history}) == (2 if extra else 1)
    updates = 0

    def ctrl_c():
        nonlocal updates
        updates += 1
        if updates == at:
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patched:
        after_each_update(patched, KerasAdam, ctrl_c)
        with pytest.raises(TrainingInterrupted, match=f"interrupted at step {at};"):
            train(make_config(**options, out=str(tmp_path / "cut")), mnist)
    resumed = train(data=mnist, resume=tmp_path / "cut")
    assert untimed(resumed.history) == untimed(full.history)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_ctrl_c_during_the_final_evaluation_lets_it_finish(mnist, tmp_path, monkeypatch):
    training = importlib.import_module("mnist_cnn.training.loop")

    def interrupted_evaluate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return evaluate(*args, **kwargs)

    evaluate = training.evaluate
    monkeypatch.setattr(training, "evaluate", interrupted_evaluate)
    run = train(make_config(epochs=1, limit_train=256, limit_test=64, out=str(tmp_path), verbose=0), mnist)
    assert run.metrics["accuracy"] == json.loads((tmp_path / "metrics.json").read_text())["accuracy"]


def test_a_second_ctrl_c_during_the_final_evaluation_says_how_to_finish(mnist, tmp_path, monkeypatch):
    training = importlib.import_module("mnist_cnn.training.loop")
    config = make_config(epochs=1, limit_train=256, limit_test=64, out=str(tmp_path / "cut"), verbose=0)
    full = train(dataclasses.replace(config, out=str(tmp_path / "full")), mnist)

    def twice_interrupted_evaluate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the second one does not wait
        raise AssertionError("not interrupted")

    monkeypatch.setattr(training, "evaluate", twice_interrupted_evaluate)
    with pytest.raises(TrainingInterrupted, match=rf"interrupted during the final evaluation; training had finished: "
                                                  rf"mnist-cnn train --resume {tmp_path / 'cut'} evaluates it"):
        train(config, mnist)
    monkeypatch.undo()
    assert not (tmp_path / "cut" / "metrics.json").exists()
    assert train(data=mnist, resume=tmp_path / "cut").metrics == full.metrics | {"train_seconds": pytest.approx(
        full.metrics["train_seconds"], rel=10)}


def test_a_run_stopped_before_its_first_checkpoint_starts_again_on_resume(mnist, tmp_path, capsys):
    from mnist_cnn.cli import main

    config = make_config(epochs=1, limit_train=256, limit_test=64, out=str(tmp_path / "full"))
    full = train(config, mnist, log=lambda _: None)
    cut = tmp_path / "cut"  # what a kill while loading the data leaves: the settings, no checkpoint yet
    cut.mkdir()
    for name in ("config.json", "spec.json"):
        (cut / name).write_bytes((tmp_path / "full" / name).read_bytes())
    assert main(["evaluate", str(cut)]) == 2
    assert f"holds an interrupted run (no model.safetensors yet); finish it with `mnist-cnn train --resume {cut}`" \
        in capsys.readouterr().err
    said = []
    resumed = train(data=mnist, resume=cut, log=said.append)
    assert untimed(resumed.history) == untimed(full.history)
    a, b = weights(cut), weights(tmp_path / "full")
    assert all(torch.equal(a[k], b[k]) for k in b) and said[0] == f"{cut} stopped before its first checkpoint: " \
                                                               "training it from the beginning"


def test_an_interruption_ends_the_progress_bar_line_first(mnist, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # the bar is drawn on terminals only
    after_each_update(monkeypatch, KerasRMSprop, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted, match="interrupted at step 1;"):
        train(make_config(epochs=1, limit_train=640, limit_test=64, out=str(tmp_path), verbose=1), mnist,
              log=lambda _: None)
    out = capsys.readouterr().out
    assert "1/10 [" in out and out.endswith("\n")  # the error that follows starts a line of its own


def test_resume_refuses_fewer_epochs_than_trained_and_a_new_run_refuses_the_folder(mnist, tmp_path):
    config = make_config(epochs=2, limit_train=256, limit_test=64, batch_size=64, out=str(tmp_path), verbose=0)
    train(config, mnist)
    # from Python, the options are named as Python names them (the CLI names them by their flags)
    with pytest.raises(MnistCnnError, match=r"with epochs 1: it has already trained 2 epochs"):
        train(make_config(epochs=1), mnist, resume=tmp_path)
    with pytest.raises(MnistCnnError, match=r"with epochs 1: it has already trained 2 epochs"):
        train(data=mnist, resume=tmp_path, epochs=1)
    with pytest.raises(MnistCnnError, match=r"already holds a run; continue it with resume"):
        train(config, mnist)
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2  # untouched


def test_damaged_checkpoint_is_skipped_for_the_previous_one(mnist, tmp_path):
    config = make_config(epochs=2, limit_train=256, limit_test=64, batch_size=64, out=str(tmp_path), verbose=0)
    train(config, mnist)
    newest, previous = checkpoint_paths(tmp_path)[:2]
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0xFF  # flip bits in the tensor data
    newest.write_bytes(bytes(data))
    with pytest.raises(MnistCnnError, match=r"damaged: its checksum does not match"):
        load_tensors(newest)
    warnings = []
    _, meta = latest_checkpoint(tmp_path, warn=warnings.append)
    assert meta["step"] == int(previous.stem.split("-")[1])
    assert "skipping checkpoint" in warnings[0] and f"(kept as {newest.name}.damaged)" in warnings[0]
    # set aside, out of the rotation of the newest two: the next checkpoint must not delete the good one
    assert checkpoint_paths(tmp_path) == [previous] and (tmp_path / "checkpoints" / f"{newest.name}.damaged").exists()
    newest.write_bytes(b"not a checkpoint")
    with pytest.raises(MnistCnnError, match=r"damaged or not a safetensors file"):
        load_tensors(newest)
    # every one damaged: refused, and refused again, not taken for a run that never started
    history = (tmp_path / "history.json").read_text()
    (tmp_path / "model.safetensors").unlink()
    for path in checkpoint_paths(tmp_path):
        path.write_bytes(b"not a checkpoint")
    for _ in range(2):
        with pytest.raises(MnistCnnError, match=r"every checkpoint in .* is damaged"):
            train(data=mnist, resume=tmp_path, log=lambda _: None)
    assert (tmp_path / "history.json").read_text() == history


def test_resume_refuses_a_config_json_that_names_no_model(mnist, tmp_path):
    (tmp_path / "config.json").write_text("{}")  # all defaults would otherwise train a full-size run
    with pytest.raises(MnistCnnError, match=r"config.json names no model \(is it a run's\?\)"):
        train(data=mnist, resume=tmp_path)


def test_full_disk_fails_clearly_and_keeps_the_previous_checkpoint(mnist, tmp_path, monkeypatch):
    train(make_config(epochs=1, limit_train=128, limit_test=64, out=str(tmp_path), verbose=0), mnist)
    before = {p.name: p.read_bytes() for p in checkpoint_paths(tmp_path)}
    real_mkstemp = tempfile.mkstemp

    def mkstemp_on_a_full_disk(*args, **kwargs):  # checkpoint writes go to /dev/full: a real ENOSPC
        fd, name = real_mkstemp(*args, **kwargs)
        if "ckpt" in name:
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, name

    monkeypatch.setattr("mnist_cnn.atomic.tempfile.mkstemp", mkstemp_on_a_full_disk)
    with pytest.raises(MnistCnnError, match=r"could not write .*ckpt-.*No space left on device"):
        train(make_config(epochs=2, verbose=0), mnist, resume=tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in checkpoint_paths(tmp_path)} == before
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"
    _, meta = latest_checkpoint(tmp_path)
    assert meta["step"] == 2  # 128 images, batch 64: the epoch-1 checkpoint is whole


def test_a_resumed_run_keeps_its_architecture_when_the_spec_file_changes(mnist, tmp_path):
    spec = tmp_path / "net.toml"
    spec.write_text(Path(SPEC).read_text())
    options = dict(model=str(spec), epochs=1, limit_train=300, limit_test=50, verbose=0, threads=1)
    train(make_config(**options, out=str(tmp_path / "run")), mnist)
    full = train(make_config(**{**options, "epochs": 2}, out=str(tmp_path / "full")), mnist)
    spec.write_text(Path(SPEC).read_text().replace("relu", "tanh"))  # the file now describes another model
    resumed = train(make_config(epochs=2), mnist, resume=tmp_path / "run")
    assert untimed(resumed.history) == untimed(full.history)
    spec.unlink()  # nor does a resume need the file
    train(make_config(epochs=3), mnist, resume=tmp_path / "run")


def test_resuming_a_run_that_stopped_early_trains_no_more(mnist, tmp_path):
    options = dict(epochs=8, limit_train=1000, limit_test=100, validation_split=0.2, early_stopping=1, verbose=1,
                   threads=1, out=str(tmp_path / "run"))
    stopped = train(make_config(**options), mnist, log=lambda _: None)
    assert len(stopped.history) < 8
    said = []
    # a larger --epochs does not undo early stopping: nothing trains, and config.json keeps its 8 epochs
    resumed = train(make_config(**{**options, "epochs": 20}), mnist, resume=tmp_path / "run", log=said.append)
    assert said[0] == f"{tmp_path / 'run'} stopped early after {len(stopped.history)} epochs (val_loss did not " \
                      "improve for 1 epoch); evaluating it again"
    assert untimed(resumed.history) == untimed(stopped.history)
    assert resumed.metrics == stopped.metrics
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 8
    before = len(said)
    again = train(make_config(epochs=1), mnist, resume=tmp_path / "run", log=said.append)  # fewer than it trained
    assert said[before].startswith(f"{tmp_path / 'run'} stopped early after") and again.metrics == stopped.metrics
