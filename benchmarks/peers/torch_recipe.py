#!/usr/bin/env python
"""Peer benchmark: "the usual PyTorch recipe" for MNIST, as in pytorch/examples/mnist/main.py.

Run with the torch venv from benchmarks/peers/.venvs/ (see setup.sh / README.md):

    benchmarks/peers/.venvs/torch/bin/python benchmarks/peers/torch_recipe.py \\
        --model keras-basic --epochs 3 --json-out out.json

What makes it "the usual recipe" (and what our package is compared against):
  * a torch.utils.data.Dataset holding the uint8 images whose __getitem__ converts ONE sample at a time
    to a normalised float tensor (the equivalent of torchvision's ToTensor() + Normalize((0.1307,),
    (0.3081,)); torchvision itself is not installed, so the conversion is written out in torch ops);
  * DataLoader(dataset, batch_size=64, shuffle=True) with the default collate and, as in
    pytorch/examples on CPU, no worker processes (--num-workers to change);
  * a plain nn.Module, loss.backward(), optimizer.step() loop; evaluation under torch.no_grad() with
    test batch size 1000;
  * on CUDA (--device, default cuda where there is one, as pytorch/examples picks it), its DataLoader
    settings there: one worker process and pinned memory, each batch moved with .to(device).

Models (same layer stacks as the Keras peers, NCHW):
  keras-basic  Conv(32,3)-ReLU-MaxPool-Conv(64,3)-ReLU-MaxPool-Conv(64,3)-ReLU-Flatten-Linear(64)-ReLU-
               Linear(10). 93,322 params. RMSprop with Keras's defaults (lr 1e-3, alpha(rho) 0.9,
               eps 1e-7, momentum 0); CrossEntropyLoss on logits (= softmax + categorical crossentropy).
  keras-bn     [Conv32-BN-ReLU]x2 MaxPool [Conv64-BN-ReLU]x2 MaxPool Flatten Linear512-BN-ReLU Dropout(0.2)
               Linear(10); BN with Keras's defaults (momentum 0.99 -> torch momentum 0.01, eps 1e-3); Adam with
               Keras's defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-7). 597,738 params. Augmentation in
               __getitem__ like torchvision's RandomAffine(degrees=8, translate=(0.08, 0.08),
               scale=(0.92, 1.08), shear=0.3) would do it: one random affine per image, resampled with
               F.affine_grid + F.grid_sample (bilinear, border padding ~ Keras's fill_mode='nearest').

Per-epoch wall-clock time covers the whole training loop of that epoch (data loading included).
No import of the mnist_cnn package; data is read from the MNIST IDX files by mnist_idx.py (numpy + gzip).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mnist_idx import default_data_dir, load_mnist, report, summarise_epochs  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

EXPECTED_PARAMS = {"keras-basic": 93_322, "keras-bn": 597_738}
MEAN, STD = 0.1307, 0.3081  # pytorch/examples mnist Normalize


class MnistDataset(Dataset):
    """uint8 images in memory; each __getitem__ returns (float tensor [1,28,28], int label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool = False):
        self.images = images  # uint8 [N,28,28]
        self.labels = labels.astype(np.int64)
        self.augment = augment

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        img = torch.from_numpy(self.images[idx]).to(torch.float32).div_(255.0).unsqueeze_(0)  # ToTensor
        if self.augment:
            img = random_affine(img)
        img = img.sub_(MEAN).div_(STD)  # Normalize
        return img, int(self.labels[idx])


def random_affine(img: torch.Tensor) -> torch.Tensor:
    """One random affine per image: rotation +-8 deg, shift +-8 %, x-shear +-0.3 deg, zoom 0.92..1.08 (x, y
    independent, as Keras's ImageDataGenerator samples them)."""
    rot = math.radians(np.random.uniform(-8, 8))
    shear = math.radians(np.random.uniform(-0.3, 0.3))
    zx, zy = np.random.uniform(0.92, 1.08, 2)
    tx, ty = np.random.uniform(-0.08, 0.08, 2) * 2  # affine_grid works in [-1, 1] coordinates (width 2)
    c, s = math.cos(rot), math.sin(rot)
    rotation = np.array([[c, -s], [s, c]])
    shear_m = np.array([[1.0, -math.sin(shear)], [0.0, math.cos(shear)]])
    zoom = np.array([[zx, 0.0], [0.0, zy]])
    a = rotation @ shear_m @ zoom  # maps output coords -> input coords (as ImageDataGenerator does)
    theta = torch.tensor([[a[0, 0], a[0, 1], tx], [a[1, 0], a[1, 1], ty]], dtype=torch.float32).unsqueeze(0)
    grid = F.affine_grid(theta, [1, 1, 28, 28], align_corners=False)
    return F.grid_sample(img.unsqueeze(0), grid, mode="bilinear", padding_mode="border",
                         align_corners=False).squeeze(0)


class KerasBasic(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.fc1 = nn.Linear(3 * 3 * 64, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)  # logits; softmax lives in CrossEntropyLoss


class KerasBN(nn.Module):
    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, 32), *block(32, 32), nn.MaxPool2d(2),
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * 4 * 64, 512), nn.BatchNorm1d(512, eps=1e-3, momentum=0.01), nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(512, 10),
        )

    def forward(self, x):
        return self.features(x)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(EXPECTED_PARAMS), default="keras-basic")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--test-batch-size", type=int, default=1000)
    p.add_argument("--data", default=None, help="directory with the 4 MNIST IDX(.gz) files "
                   "(default: src/mnist_cnn/datasets/mnist)")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--json-out", default=None, help="write the result JSON here (also printed to stdout)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (pytorch/examples on CPU: 0)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    data_dir = Path(args.data) if args.data else default_data_dir()
    t0 = time.perf_counter()
    x_train, y_train, x_test, y_test = load_mnist(data_dir)
    if args.limit_train:
        x_train, y_train = x_train[: args.limit_train], y_train[: args.limit_train]
    load_s = time.perf_counter() - t0

    augment = args.model == "keras-bn"
    device = torch.device(args.device)
    loader = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {"num_workers": args.num_workers}
    train_loader = DataLoader(MnistDataset(x_train, y_train, augment=augment), batch_size=args.batch_size,
                              shuffle=True, **loader)
    test_loader = DataLoader(MnistDataset(x_test, y_test), batch_size=args.test_batch_size, shuffle=False, **loader)

    if args.model == "keras-basic":
        model = KerasBasic().to(device)
        optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7, momentum=0.0)
    else:
        model = KerasBN().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    trainable = sum(p.numel() for p in model.parameters())
    # Keras's count_params() also counts BatchNormalization's moving mean/variance (non-trainable).
    params = trainable + sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert params == EXPECTED_PARAMS[args.model], (
        f"{args.model}: {params} params, expected {EXPECTED_PARAMS[args.model]}")
    loss_fn = nn.CrossEntropyLoss()

    seconds, history = [], []
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        for data, target in train_loader:
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            output = model(data)
            loss = loss_fn(output, target)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(target)
            correct += (output.argmax(1) == target).sum().item()
            seen += len(target)
        dt = time.perf_counter() - t0
        seconds.append(dt)
        history.append({"loss": total_loss / seen, "accuracy": correct / seen})
        print(f"[{args.model} torch] epoch {epoch}/{args.epochs}: {dt:.2f}s "
              f"loss={total_loss / seen:.4f} accuracy={correct / seen:.4f}", flush=True)

    model.eval()
    t0 = time.perf_counter()
    test_loss, correct = 0.0, 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.cross_entropy(output, target, reduction="sum").item()
            correct += (output.argmax(1) == target).sum().item()
    eval_s = time.perf_counter() - t0
    n_test = len(test_loader.dataset)

    result = {
        "tool": "torch-recipe",
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
                     "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
        "model": args.model,
        "params": int(params),
        "trainable_params": int(trainable),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": "rmsprop(keras defaults)" if args.model == "keras-basic" else "adam(keras defaults)",
        "augmentation": "per-sample affine_grid/grid_sample in __getitem__" if augment else None,
        "n_train": int(len(x_train)),
        "n_test": int(n_test),
        **summarise_epochs(seconds, len(x_train)),
        "test_accuracy": round(correct / n_test, 5),
        "test_loss": round(test_loss / n_test, 5),
        "history": history,
        "eval_seconds": round(eval_s, 3),
        "load_seconds": round(load_s, 3),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "num_workers": loader["num_workers"],
        "cpu_count": os.cpu_count(),
        "data": str(data_dir),
    }
    report(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
