"""The `fast` recipe end to end, as a user runs it, plus memory and inference speed.

    python benchmarks/fast.py              # 3 seeds of `mnist-cnn train --recipe fast`, then inference speed
    python benchmarks/fast.py --seeds 0 1 2 3 4

Per seed: training seconds (sum of the epochs), the whole command's wall time (start-up, data loading,
test evaluation and writing the run included), peak resident memory of the process, test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_results  # noqa: E402


def train_once(args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "mnist_cnn", "train", *args, "--out", out, "--json"],
                                stdout=log, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory, not the max over all children
        wall = time.perf_counter() - t0
        if status != 0:
            raise SystemExit(f"mnist-cnn train {' '.join(args)} failed with status {status}")
        log.seek(0)
        result = json.loads(log.read().strip().splitlines()[-1])
    return {"args": " ".join(args) or "(defaults)", "train_s": sum(r["seconds"] for r in result["history"]),
            "command_s": wall, "peak_mb": usage.ru_maxrss / 1024, "test_acc": result["test_accuracy"] * 100}


def inference_speed() -> dict:
    import torch

    from mnist_cnn import get_spec, load_mnist, predict_logits
    from mnist_cnn.models import build_model

    x = load_mnist().x_test
    out = {}
    for name in ("keras-basic", "fast-cnn"):
        model = build_model(get_spec(name)).eval()
        predict_logits(model, x[:1000])
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            predict_logits(model, x, batch_size=1000)
            times.append(time.perf_counter() - t0)
        single = []
        one = x[:1].float().div(255).unsqueeze(1)
        with torch.inference_mode():
            for i in range(200):
                t0 = time.perf_counter()
                model(one)
                single.append(time.perf_counter() - t0)
        out[name] = {"batched_images_per_s": len(x) / statistics.median(times),
                     "single_image_ms_p50": statistics.median(single) * 1e3}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-default", action="store_true", help="skip the peak-memory run of plain `train`")
    args = parser.parse_args()
    rows = [train_once(["--recipe", "fast", "--seed", str(s)]) for s in args.seeds]
    for r in rows:
        print(table([r], list(r)), flush=True)
    summary = {"mean_test_acc": statistics.mean(r["test_acc"] for r in rows),
               "median_train_s": statistics.median(r["train_s"] for r in rows),
               "median_command_s": statistics.median(r["command_s"] for r in rows)}
    if not args.skip_default:
        rows.append(train_once([]))
    print()
    print(table(rows, ["args", "train_s", "command_s", "peak_mb", "test_acc"]))
    print(f"fast: mean test accuracy {summary['mean_test_acc']:.2f}% over {len(args.seeds)} seeds, "
          f"median {summary['median_train_s']:.2f} s training, {summary['median_command_s']:.2f} s whole command")
    inference = inference_speed()
    for name, r in inference.items():
        print(f"inference {name}: {r['batched_images_per_s']:,.0f} images/s batched (1000), "
              f"{r['single_image_ms_p50']:.2f} ms single image (p50)")
    print("wrote", write_results("fast", {"argv": sys.argv[1:], "rows": rows, "summary": summary,
                                          "inference": inference}))


if __name__ == "__main__":
    main()
