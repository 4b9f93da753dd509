"""Accuracy benchmark (issue 3): tutorial recipe, `best` recipe, an ensemble of `best` models, the ablation.

    python benchmarks/accuracy.py                       # everything: hours on a 2-core CPU
    python benchmarks/accuracy.py --only keras-bn       # one section (keras-bn, best, ensemble, ablation)
    python benchmarks/accuracy.py --only best,ensemble --seeds 3 --ensemble-size 5 --threads 2
    python benchmarks/accuracy.py --quick               # a smoke test of the script on tiny subsets

Every run is an ordinary run directory under --runs (default benchmarks/results/runs); a finished run with the
same config is reused, so an interrupted benchmark continues and `ensemble` reuses the `best` runs. Selection
(TTA or not for the ensemble) is made on the validation split the runs carve from the training images; each
test figure is a single evaluation of a finished model. Prints a Markdown table and merges its sections into
benchmarks/results/accuracy.json (accuracy-quick.json for --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from mnist_cnn import load_mnist, make_config
from mnist_cnn.atomic import atomic_write_json
from mnist_cnn.ensemble import evaluate_ensemble, train_members, write_ensemble
from mnist_cnn.experiments import load_grid, mean_std, run_grid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, steady_median  # benchmarks/common.py, shared by the benchmark scripts

HERE = Path(__file__).resolve().parent
SECTIONS = ("keras-bn", "best", "ensemble", "ablation")
TARGETS = {"keras-bn": 0.9955, "best": 0.9965, "ensemble": 0.9976}
BEST_MAX_MINUTES = 10.0


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def seeds_section(name: str, recipe: str, args, data, overrides) -> dict:
    """`seeds` runs of one recipe: test accuracy mean/std, seconds per epoch, minutes per model."""
    config = make_config(recipe=recipe, **overrides)
    runs = train_members(config, args.seeds, data=data, out=args.runs / name, log=log)
    accs = [r.metrics["accuracy"] for r in runs]
    epoch_s = [steady_median([row["seconds"] for row in r.history]) for r in runs]  # first epoch = warm-up
    minutes = [r.metrics.get("train_seconds", sum(row["seconds"] for row in r.history)) / 60 for r in runs]
    vals = [r.history[-1].get("val_accuracy") for r in runs if r.history]
    mean, std = mean_std(accs)
    return {"recipe": recipe, "config": config.to_dict(), "seeds": [r.config["seed"] for r in runs],
            "test_accuracy": accs, "test_mean": mean, "test_std": std,
            "val_accuracy": vals, "val_mean": mean_std([v for v in vals if v is not None])[0] if any(vals) else None,
            "seconds_per_epoch": sum(epoch_s) / len(epoch_s), "minutes_per_model": sum(minutes) / len(minutes),
            "run_dirs": [str(r.path) for r in runs]}


def ensemble_section(args, data, overrides) -> dict:
    config = make_config(recipe="best", **overrides)
    runs = train_members(config, args.ensemble_size, data=data, out=args.runs / "best", log=log)
    _, plain = evaluate_ensemble(runs, tta=False, data=data, limit_test=overrides.get("limit_test"), log=log)
    model_tta, tta = evaluate_ensemble(runs, tta=True, data=data, limit_test=overrides.get("limit_test"), log=log)
    val = plain.get("validation") or {}
    use_tta = bool(val) and val["ensemble_tta"] > val["ensemble"]  # chosen on validation, never on test
    chosen = tta if use_tta else plain
    out = write_ensemble(args.runs / "ensemble", model_tta if use_tta else model_tta.with_shifts(None), chosen)
    return {"size": len(runs), "run_dirs": [str(r.path) for r in runs], "members": plain["members"],
            "member_mean": plain["member_mean_accuracy"], "test_plain": plain["accuracy"], "test_tta": tta["accuracy"],
            "validation": val, "tta_chosen_on_validation": use_tta, "test_mean": chosen["accuracy"],
            "ensemble_dir": str(out)}


def ablation_section(args, data, overrides) -> dict:
    grid = load_grid(args.grid)
    overrides = {**overrides, **({"epochs": args.ablation_epochs} if args.ablation_epochs else {})}
    results = run_grid(grid, seeds=args.seeds, out=args.runs / "ablation", data=data, overrides=overrides, log=log)
    print(results["table"])
    return {k: v for k, v in results.items() if k != "table"}


def dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def log(msg: str) -> None:
    print(msg, flush=True)


def table(results: dict) -> str:
    rows = ["| benchmark | result (test accuracy) | time | target | met |", "|---|---|---|---|---|"]
    s = results["sections"]
    if "keras-bn" in s:
        r = s["keras-bn"]
        rows.append(f"| keras-bn tutorial recipe, {len(r['seeds'])} seeds | {pct(r['test_mean'])} ± "
                    f"{r['test_std'] * 100:.2f} | {r['seconds_per_epoch']:.1f} s/epoch | >= 99.55% | "
                    f"{'yes' if r['test_mean'] >= TARGETS['keras-bn'] else 'no'} |")
    if "best" in s:
        r = s["best"]
        ok = r["test_mean"] >= TARGETS["best"] and r["minutes_per_model"] <= BEST_MAX_MINUTES
        rows.append(f"| best recipe, {len(r['seeds'])} seeds | {pct(r['test_mean'])} ± {r['test_std'] * 100:.2f} "
                    f"(val {pct(r['val_mean'])}) | {dur(r['minutes_per_model'] * 60)}/model | >= 99.65%, <= 10 min | "
                    f"{'yes' if ok else 'no'} |")
    if "ensemble" in s:
        r = s["ensemble"]
        rows.append(f"| ensemble of {r['size']} best{' + TTA' if r['tta_chosen_on_validation'] else ''} | "
                    f"{pct(r['test_mean'])} (plain {pct(r['test_plain'])}, TTA {pct(r['test_tta'])}; members' "
                    f"mean {pct(r['member_mean'])}) | - | >= 99.76% | "
                    f"{'yes' if r['test_mean'] >= TARGETS['ensemble'] else 'no'} |")
    if "ablation" in s:
        for c in s["ablation"]["cells"]:
            rows.append(f"| keras-dropout {c['label']}, {len(c['runs'])} seeds | {pct(c['test_accuracy_mean'])} ± "
                        f"{(c['test_accuracy_std'] or 0) * 100:.2f} (val {pct(c['val_accuracy_mean'])}) | "
                        f"{dur(c['train_seconds_mean'])}/run | - | - |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}")
    p.add_argument("--seeds", type=int, default=3, help="seeds per recipe / per ablation cell (default 3)")
    p.add_argument("--ensemble-size", type=int, default=5, help="members of the ensemble (default 5)")
    p.add_argument("--runs", type=Path, default=HERE / "results" / "runs", help="where the run directories go")
    p.add_argument("--grid", type=Path, default=HERE / "ablation_keras_dropout.toml", help="the ablation grid")
    p.add_argument("--ablation-epochs", type=int, help="epochs of each ablation run (default: the tutorial's 20)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: every core; 1 is far faster "
                   "when other processes share the cores)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 epoch on 2,000 images, 2 seeds")
    p.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/accuracy.json)")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(only) - set(SECTIONS))
    if bad:
        p.error(f"unknown section {bad[0]!r}; expected some of {', '.join(SECTIONS)}")
    overrides = {"threads": args.threads}
    if args.quick:
        overrides.update(epochs=1, limit_train=2000, limit_test=1000, val_size=500)
        args.seeds, args.ensemble_size = min(args.seeds, 2), min(args.ensemble_size, 2)
        args.runs = args.runs / "quick"
    overrides = {k: v for k, v in overrides.items() if v is not None}
    out = args.out or HERE / "results" / ("accuracy-quick.json" if args.quick else "accuracy.json")
    previous = json.loads(out.read_text()) if out.exists() else {}
    results = {"sections": dict(previous.get("sections", {})), "machine": {
        **machine(), "platform": platform.platform(), "threads": args.threads or torch.get_num_threads(),
        "load_average_at_start": os.getloadavg()}}
    data = load_mnist()
    for name in only:
        started = time.perf_counter()
        log(f"== {name} ==")
        if name in ("keras-bn", "best"):
            section = seeds_section(name, name, args, data, overrides)
        elif name == "ensemble":
            section = ensemble_section(args, data, overrides)
        else:
            section = ablation_section(args, data, overrides)
        section.update(finished=datetime.now().isoformat(timespec="seconds"),
                       wall_seconds=time.perf_counter() - started, quick=args.quick)
        results["sections"][name] = section
        results["machine"]["load_average_at_end"] = os.getloadavg()
        atomic_write_json(out, results)  # after every section
    text = table(results)
    print(text)
    results["table"] = text
    atomic_write_json(out, results)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
