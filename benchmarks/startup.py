"""The fixed cost of a command: what a `mnist-cnn train` process spends outside its training epochs.

    python benchmarks/startup.py             # 5 runs of each, medians

Each row is a fresh Python process, so imports are cold in the way a user's command is (files in the page cache).
The last row is `mnist-cnn train --recipe fast` whole, and its wall time less its epochs' training seconds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_results  # noqa: E402
from fast import train_once  # noqa: E402

STEPS = {
    "python itself": "pass",
    "import torch": "import torch",
    "import mnist_cnn's training loop": "import mnist_cnn.training.loop",
    "+ load the bundled MNIST (checked)": "from mnist_cnn.data import load_mnist; load_mnist()",
    "torch.optim.Adam's first instance (we avoid it)":
        "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])",
}


def seconds(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for name, code in STEPS.items():
        runs = [seconds(code) for _ in range(args.runs)]
        rows.append({"step": name, "seconds (median)": statistics.median(runs), "min": min(runs), "max": max(runs)})
    commands = [train_once(["--recipe", "fast"]) for _ in range(args.runs)]
    for name, values in (("mnist-cnn train --recipe fast", [c["command_s"] for c in commands]),
                         ("  of which outside training", [c["command_s"] - c["train_s"] for c in commands])):
        rows.append({"step": name, "seconds (median)": statistics.median(values), "min": min(values),
                     "max": max(values)})
    print(table(rows, list(rows[0])))
    print("wrote", write_results("startup", {"argv": sys.argv[1:], "rows": rows}))


if __name__ == "__main__":
    main()
