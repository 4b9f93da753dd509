"""Scale-out with PyTorch's own engine: `torchrun -m mnist_cnn train` runs DistributedDataParallel (gloo on CPU).

Two processes, each taking half of every global batch, must end where one process with the same global
batch ends. keras-basic has no batch norm or dropout, so the only difference is the order of float sums
(DDP averages the two half-batch gradients): in fp32 we allow 1e-4 on the weights after 10 steps. (With bf16
autocast the half-batch rounding differs, and rmsprop amplifies it to about 1e-2 after 10 steps.)
"""

import subprocess
import sys

from mnist_cnn.runs import load_tensors

ARGS = ["--epochs", "1", "--batch-size", "64", "--limit-train", "640", "--limit-test", "100", "--seed", "5",
        "--threads", "1", "--precision", "fp32"]


def test_two_gloo_processes_match_one_process(tmp_path):
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "mnist_cnn", "train", *ARGS, "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, timeout=300)
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
