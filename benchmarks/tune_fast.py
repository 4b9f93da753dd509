"""A 20-trial search of the `fast` recipe's neighbourhood, with one and with two workers on one PostgreSQL database.

    python benchmarks/tune_fast.py --storage postgresql://postgres@127.0.0.1:5432/postgres
    python benchmarks/tune_fast.py --storage ... --trials 6 --limit-train 15000   # a smaller one, on a busy machine

Both studies search lr (log), batch size and label smoothing around `fast` (2 epochs, one-cycle, adam), on the
last 5,000 training images as the validation split, one thread per worker. The hand-tuned `fast` is trained on
the same split with the same seed. Selection is on validation only; the test accuracy of the best trial and of
`fast` are reported once, at the end, from their runs' metrics.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_results  # noqa: E402

SEARCH = """
name = "{name}"
trials = {trials}
[base]
recipe = "fast"
val_size = 5000
threads = 1
{limit}
[search]
lr = {{low = 0.005, high = 0.05, log = true}}
batch_size = {{choices = [128, 256, 512]}}
label_smoothing = {{low = 0.0, high = 0.2}}
"""


def run_study(folder: Path, name: str, storage: str, workers: int, trials: int, limit_train: int | None) -> dict:
    """Start `workers` copies of the same tune command; the wall time is until the last one exits."""
    search = folder / f"{name}.toml"
    search.write_text(SEARCH.format(name=name, trials=trials,
                                    limit=f"limit_train = {limit_train}" if limit_train else ""))
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "mnist_cnn", "tune", str(search), "--storage", storage,
                               "--out", str(folder / f"{name}-worker-{k}"), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for k in range(workers)]
    outputs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker of {name} failed")
    result = max((json.loads(o.strip().splitlines()[-1]) for o in outputs), key=lambda r: len(r["trials"]))
    return {"name": name, "workers": workers, "wall_s": wall, "result": result}


def baseline(folder: Path, limit_train: int | None) -> dict:
    out = folder / "fast-baseline"
    limit = ["--limit-train", str(limit_train)] if limit_train else []
    subprocess.run([sys.executable, "-m", "mnist_cnn", "train", "--recipe", "fast", "--val-size", "5000",
                    "--threads", "1", *limit, "--out", str(out), "--json"], check=True, capture_output=True)
    history = json.loads((out / "history.json").read_text())
    return {"val_accuracy": history[-1]["val_accuracy"], "run_dir": str(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", required=True, help="a PostgreSQL URL both studies are stored in")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--limit-train", type=int, help="the first N training images (the last 5,000 validate)")
    parser.add_argument("--keep", metavar="DIR", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="tune-fast-"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    hand = baseline(folder, args.limit_train)
    print(f"fast (hand-tuned): val_accuracy {hand['val_accuracy']:.4f}", flush=True)
    studies = [run_study(folder, f"fast-{w}w-{stamp}", args.storage, w, args.trials, args.limit_train)
               for w in (1, 2)]
    rows, trial_rows = [], []
    for study in studies:
        r = study["result"]
        states = [t["state"] for t in r["trials"]]
        rows.append({"workers": study["workers"], "wall_s": study["wall_s"], "trials": len(states),
                     "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
                     "best_val": r["best"]["value"], "beats_fast_on_val": r["best"]["value"] > hand["val_accuracy"]})
        trial_rows += [{"workers": study["workers"], "trial": t["trial"], "state": t["state"], "val": t["value"],
                        **t["params"], "seconds": t["seconds"]} for t in r["trials"]]
    print(table(trial_rows, ["workers", "trial", "state", "val", "lr", "batch_size", "label_smoothing", "seconds"]))
    print(table(rows, list(rows[0])))
    # reported once, after the selection: the test accuracy of the best trial of each study and of `fast`
    test = {"fast": json.loads((Path(hand["run_dir"]) / "metrics.json").read_text())["accuracy"]}
    for study in studies:
        best_run = Path(study["result"]["best"]["run_dirs"][0])
        test[f"best of {study['workers']} worker(s)"] = json.loads((best_run / "metrics.json").read_text())["accuracy"]
    print("test accuracy (reported once):", ", ".join(f"{k} {v * 100:.2f}%" for k, v in test.items()))
    path = write_results("tune_fast", {"argv": sys.argv[1:], "fast_val_accuracy": hand["val_accuracy"],
                                       "studies": rows, "trials": trial_rows, "test_accuracy": test,
                                       "best": {s["workers"]: s["result"]["best"] for s in studies}})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
