"""Scale-out with PyTorch's own engine: `torchrun -m mnist_cnn train` runs DistributedDataParallel (gloo on CPU).

Two processes, each taking half of every global batch, must end where one process with the same global
batch ends. keras-basic has no batch norm or dropout, so the only difference is the order of float sums
(DDP averages the two half-batch gradients): in fp32 we allow 1e-4 on the weights after 10 steps. (With bf16
autocast the half-batch rounding differs, and rmsprop amplifies it to about 1e-2 after 10 steps.)
"""

import json
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import test_resume
import torch

from mnist_cnn import MnistCnnError
from mnist_cnn.flags import flag_name
from mnist_cnn.runs import checkpoint_paths, load_tensors
from mnist_cnn.training.distributed import device_for as _device

# 643 images: the 11th batch holds 3, split 2 + 1 between the processes, whose gradients must still average to
# the mean over the whole batch (each process's mean weighed by its share, not the plain mean of the two)
ARGS = ["--epochs", "1", "--batch-size", "64", "--limit-train", "643", "--limit-test", "100", "--seed", "5",
        "--threads", "1", "--precision", "fp32", "--device", "cpu"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "mnist_cnn"]


def test_two_gloo_processes_match_one_process(tmp_path):
    ddp = subprocess.run([*TORCHRUN, "train", *ARGS, "--out", str(tmp_path / "ddp")], capture_output=True, text=True,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es)" in ddp.stdout
    assert ddp.stdout.count("Epoch 1/1") == 1  # only rank 0 logs
    single = subprocess.run([sys.executable, "-m", "mnist_cnn", "train", *ARGS, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    a, _ = load_tensors(tmp_path / "ddp" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "one" / "model.safetensors")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-4, f"DDP and single-process weights differ by {diff}"


def test_processes_take_a_gpu_each_or_share_the_cpu(monkeypatch):
    # NCCL refuses two processes on one GPU: `auto` falls back to gloo on the CPU, an explicit cuda says why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _device("auto", local_world=1).type == "cuda"
    assert _device("auto", local_world=2).type == "cpu"
    with pytest.raises(MnistCnnError) as error:
        _device("cuda", local_world=2)
    # as the CLI says it (from Python: "device cuda: ...")
    assert re.match(r"^--device cuda: 2 processes on this machine but 1 CUDA device\(s\); NCCL needs one per process "
                    r"\(start fewer, or use --device cpu\)", error.value.as_flags(flag_name))


def test_a_last_batch_smaller_than_the_processes_is_left_out(tmp_path):
    # 641 images: the last batch would hold one, and the second process none (a NaN loss; batch norm fails)
    args = [*(a if a != "643" else "641" for a in ARGS), "--model", "fast-cnn"]
    ddp = subprocess.run([*TORCHRUN, "train", *args, "--out", str(tmp_path / "ddp")], capture_output=True, text=True,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "The last 1 image(s) of each epoch's order are left out" in ddp.stdout
    history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert all(0 < row["loss"] < 10 for row in history) and "nan" not in ddp.stdout
    one = subprocess.run([*TORCHRUN, "train", *(a if a != "643" else "1" for a in ARGS), "--out", str(tmp_path / "1")],
                         capture_output=True, text=True, timeout=300)  # fewer images than processes: refused
    assert one.returncode != 0 and "error: 1 training image(s) for 2 processes: each process needs at least one" \
        in one.stderr, one.stderr[-3000:]


def test_torchrun_stopped_by_sigterm_resumes_where_an_uninterrupted_run_ends(tmp_path):
    # a scheduler's SIGTERM to torchrun ends the workers mid-epoch; the resume must restore the epoch's running
    # loss/accuracy of every rank, not only rank 0's, as well as the weights (BN, dropout, augmentation, EMA)
    args = [*test_resume.ARGS, "--epochs", "2"]
    run = [*TORCHRUN, "train"]
    full = subprocess.run([*run, *args, "--out", str(tmp_path / "full")], capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    victim = subprocess.Popen([*run, *args, "--out", str(tmp_path / "victim")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    target = random.randint(62, 100)  # within the second epoch (57 steps each), past one regular checkpoint
    deadline = time.time() + 120
    while time.time() < deadline and not any(int(p.stem.split("-")[1]) >= target
                                             for p in checkpoint_paths(tmp_path / "victim")):
        time.sleep(0.005)
    victim.send_signal(signal.SIGTERM)
    victim.wait(timeout=120)
    if (tmp_path / "victim" / "model.safetensors").exists():
        pytest.skip("the run finished before SIGTERM landed")
    resumed = subprocess.run([*run, "--resume", str(tmp_path / "victim")], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming" in resumed.stdout
    full_history = json.loads((tmp_path / "full" / "history.json").read_text())
    victim_history = json.loads((tmp_path / "victim" / "history.json").read_text())
    assert test_resume.untimed(victim_history) == test_resume.untimed(full_history)
    a, _ = load_tensors(tmp_path / "full" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "victim" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
