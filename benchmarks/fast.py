"""The `fast` recipe end to end, as a user runs it, plus memory and inference speed.

    python benchmarks/fast.py              # 3 seeds of `mnist-cnn train --recipe fast`, then inference speed
    python benchmarks/fast.py --seeds 0 1 2 3 4
    python benchmarks/fast.py --device cuda --skip-default   # on a GPU: time to 99% there

Per seed: training seconds (sum of the epochs), the whole command's wall time (start-up, data loading,
test evaluation and writing the run included), peak resident memory of the process, test accuracy.
Then inference: images/s of batched prediction (best of 3) and single-image latency (p50 of 200).
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


def inference_speed(device: str) -> list[dict]:
    """Batched prediction on the 10,000 test images (fp32), in the model's default layout (channels-last)
    and in NCHW, at the default batch (128 on CPU) and at 1,000; then one image at a time, until its scores
    are back on the host."""
    import torch

    from mnist_cnn import get_spec, load_mnist, predict_logits, to_float
    from mnist_cnn.models import build_model

    x = load_mnist().x_test
    rows = []
    for name in ("keras-basic", "keras-bn", "fast-cnn"):
        for layout in ("channels-last", "nchw"):
            model = build_model(get_spec(name)).eval().to(device)
            if layout == "nchw":
                model = model.to(memory_format=torch.contiguous_format)
                model.memory_format = torch.contiguous_format
            for batch in (128, 1000):
                predict_logits(model, x[:1000], batch_size=batch)
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    predict_logits(model, x, batch_size=batch).cpu()
                    times.append(time.perf_counter() - t0)
                row = {"model": name, "layout": layout, "batch": batch, "images_per_s": len(x) / min(times)}
                if layout == "channels-last" and batch == 128:
                    one = to_float(x[:1]).to(device).contiguous(memory_format=model.memory_format)
                    single = []
                    with torch.inference_mode():
                        for _ in range(200):
                            t0 = time.perf_counter()
                            model(one).cpu()
                            single.append(time.perf_counter() - t0)
                    row["single_image_ms_p50"] = statistics.median(single) * 1e3
                rows.append(row)
                print(table(rows[-1:], list(rows[-1])), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-default", action="store_true", help="skip the peak-memory run of plain `train`")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for training and inference (default: cpu)")
    args = parser.parse_args()
    device = ["--device", args.device]
    rows = [train_once(["--recipe", "fast", "--seed", str(s), *device]) for s in args.seeds]
    for r in rows:
        print(table([r], list(r)), flush=True)
    summary = {"mean_test_acc": statistics.mean(r["test_acc"] for r in rows),
               "median_train_s": statistics.median(r["train_s"] for r in rows),
               "median_command_s": statistics.median(r["command_s"] for r in rows)}
    if not args.skip_default:
        rows.append(train_once(device))
    print()
    print(table(rows, ["args", "train_s", "command_s", "peak_mb", "test_acc"]))
    print(f"fast: mean test accuracy {summary['mean_test_acc']:.2f}% over {len(args.seeds)} seeds, "
          f"median {summary['median_train_s']:.2f} s training, {summary['median_command_s']:.2f} s whole command")
    inference = inference_speed(args.device)
    print()
    print(table(inference, ["model", "layout", "batch", "images_per_s", "single_image_ms_p50"]))
    name = "fast" if args.device == "cpu" else f"fast-{args.device}"
    print("wrote", write_results(name, {"argv": sys.argv[1:], "rows": rows, "summary": summary,
                                        "inference": inference}))


if __name__ == "__main__":
    main()
