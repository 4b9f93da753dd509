"""BatchNorm after short training (issue 22): keras-bn's moving statistics re-estimated (`--bn-recalibrate
auto`, the default) or kept as Keras keeps them (`off`).

    python benchmarks/bn_recalibration.py                    # everything: ~15 minutes on 2 idle cores
    python benchmarks/bn_recalibration.py --seeds 1 --no-full   # the short runs and the rule only, one seed

Short runs: keras-bn's recipe on the first 10,000 training images, the last 1,000 validating (141 steps an
epoch), 1 and 2 epochs, each seed trained twice, auto and off: the training is the same, only the final
statistics differ. The rule: one off run per seed for 8 epochs; at each epoch's end its checkpoint is tested with
Keras's moving statistics and with the statistics re-estimated as auto does, and the rule says whether auto acts.
Full recipe: `make_config(model="keras-bn")`, 5 epochs on all 60,000 (4,690 steps), auto and off, one seed.
"as_trained": the saved model is the last checkpoint's, bit for bit (what training left, Keras's behaviour).
Test accuracy is on all 10,000 test images. Prints tables, writes benchmarks/results/bn-recalibration.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mnist_cnn import load_mnist
from mnist_cnn.evaluation import evaluate
from mnist_cnn.inputs import to_float
from mnist_cnn.models import build_model
from mnist_cnn.runs import latest_checkpoint, load_tensors
from mnist_cnn.spec import parse_spec
from mnist_cnn.training import make_config, train
from mnist_cnn.training.batchnorm import needs_recalibration, recalibrate, stalest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_results  # noqa: E402

SHORT = dict(model="keras-bn", limit_train=10_000, val_size=1_000)  # 9,000 training images: 141 steps an epoch


def as_trained(out: Path) -> bool:
    """The saved model is the last checkpoint's, bit for bit: nothing was re-estimated after training."""
    saved = load_tensors(out / "model.safetensors")[0]
    last = latest_checkpoint(out, warn=lambda _: None)[0]
    return all(torch.equal(v, last[f"model.{k}"]) for k, v in saved.items())


def one(data: Any, out: Path, **options: Any) -> dict[str, Any]:
    run = train(make_config(out=str(out), verbose=0, **options), data, log=lambda _: None)
    done = run.metrics.get("bn_recalibration", {})
    return {"bn_recalibrate": run.config["bn_recalibrate"], "epochs": run.config["epochs"], "seed": run.config["seed"],
            "steps": stalest(run.model)[0], "recalibrated": run.metrics["bn_recalibrated"],
            "train_accuracy": run.history[-1]["accuracy"],  # the epoch's running train-mode figure (Keras's)
            "val_accuracy": done.get("val_accuracy_after", run.history[-1].get("val_accuracy")),
            "test_accuracy": run.metrics["accuracy"], "as_trained": as_trained(out),
            "train_seconds": run.metrics["train_seconds"]}


def rule(data: Any, out: Path, epochs: int, seed: int, threads: int | None) -> list[dict[str, Any]]:
    """One off run; at each epoch's end, its checkpoint tested with the moving statistics and re-estimated."""
    images = to_float(data.x_train[:SHORT["limit_train"] - SHORT["val_size"]])  # the run's training images
    points: list[dict[str, Any]] = []

    def measure(row: dict[str, Any]) -> None:
        tensors, meta = latest_checkpoint(out, warn=lambda _: None)
        model = build_model(parse_spec(meta["spec"], "checkpoint"))
        model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
        point = {"seed": seed, "epochs": row["epoch"], "steps": meta["step"], "auto_acts": needs_recalibration(model),
                 "first_half_weight": 0.99 ** (meta["step"] / 2), "train_accuracy": row["accuracy"],
                 "test_moving": evaluate(model, data.x_test, data.y_test)["accuracy"]}
        recalibrate(model, images, 64)
        points.append({**point, "test_reestimated": evaluate(model, data.x_test, data.y_test)["accuracy"]})
        print(points[-1], flush=True)

    train(make_config(out=str(out), epochs=epochs, seed=seed, bn_recalibrate="off", verbose=0, threads=threads,
                      **SHORT), data, log=lambda _: None, on_epoch=measure)
    return points


def rule_summary(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for epochs in dict.fromkeys(p["epochs"] for p in points):
        cell = [p for p in points if p["epochs"] == epochs]
        moving, again = (statistics.mean(p[k] for p in cell) for k in ("test_moving", "test_reestimated"))
        rows.append({"epochs": epochs, "steps": cell[0]["steps"], "first_half_weight": cell[0]["first_half_weight"],
                     "auto_acts": cell[0]["auto_acts"], "seeds": len(cell), "test_moving": moving,
                     "test_reestimated": again, "gain": again - moving})
    return rows


def summary(runs: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    rows = []
    for key in dict.fromkeys((r["epochs"], r["bn_recalibrate"]) for r in runs):
        cell = [r for r in runs if (r["epochs"], r["bn_recalibrate"]) == key]
        vals = [r["val_accuracy"] for r in cell if r["val_accuracy"] is not None]
        tests = [r["test_accuracy"] for r in cell]
        rows.append({"runs": what, "epochs": key[0], "steps": cell[0]["steps"], "bn_recalibrate": key[1],
                     "recalibrated": all(r["recalibrated"] for r in cell), "seeds": len(cell),
                     "train_accuracy": statistics.mean(r["train_accuracy"] for r in cell),
                     "val_accuracy": statistics.mean(vals) if vals else None,
                     "test_accuracy": statistics.mean(tests), "test_min": min(tests), "test_max": max(tests),
                     "as_trained": all(r["as_trained"] for r in cell)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="seeds of the short runs (default 3)")
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 2], help="epochs of the short runs (default 1 2)")
    p.add_argument("--rule-epochs", type=int, default=8, help="epochs of the rule's runs (default 8: 1,128 steps)")
    p.add_argument("--no-full", action="store_true", help="leave out the full tutorial recipe")
    p.add_argument("--threads", type=int, help="torch threads (default: every core)")
    args = p.parse_args(argv)
    data, short, points, full = load_mnist(), [], [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for epochs in args.epochs:
            for seed in range(args.seeds):
                for setting in ("auto", "off"):
                    short.append(one(data, Path(tmp) / f"short-{epochs}-{seed}-{setting}", epochs=epochs, seed=seed,
                                     bn_recalibrate=setting, threads=args.threads, **SHORT))
                    print(short[-1], flush=True)
        for seed in range(args.seeds):
            points += rule(data, Path(tmp) / f"rule-{seed}", args.rule_epochs, seed, args.threads)
        if not args.no_full:
            for setting in ("auto", "off"):
                full.append(one(data, Path(tmp) / f"full-{setting}", model="keras-bn", bn_recalibrate=setting,
                                threads=args.threads))
                print(full[-1], flush=True)
    rows, rule_rows = summary(short, "9,000 images") + summary(full, "full recipe"), rule_summary(points)
    print(table(rows, ["runs", "epochs", "steps", "bn_recalibrate", "recalibrated", "seeds", "train_accuracy",
                       "val_accuracy", "test_accuracy", "test_min", "test_max", "as_trained"]))
    print()
    print(table(rule_rows, ["epochs", "steps", "first_half_weight", "auto_acts", "seeds", "test_moving",
                            "test_reestimated", "gain"]))
    path = write_results("bn-recalibration", {
        "what": "keras-bn: BatchNorm statistics re-estimated on training images (auto) or Keras's moving averages "
                "(off); short runs on the first 10,000 training images (the last 1,000 validate), the full recipe "
                "on 60,000; test accuracy on all 10,000 test images",
        "command": " ".join(["python benchmarks/bn_recalibration.py", *(sys.argv[1:] if argv is None else argv)]),
        "minutes": (time.perf_counter() - started) / 60, "summary": rows, "rule": rule_rows, "runs": short + full,
        "rule_points": points})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
