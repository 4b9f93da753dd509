"""How many members, and whether shift TTA: an ensemble chosen on the validation split (the last 5,000 training
images), never on the test set.

    python benchmarks/ensemble_choice.py                   # 5 members of the minute recipe, seeds 0-4
    python benchmarks/ensemble_choice.py --recipe fast --members 8

Trains the members once, then scores the ensembles of the first k (k = 1..members) on validation, with and
without TTA, as `mnist-cnn ensemble` combines them (softmax averaged); training seconds are the members' summed.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="minute")
    parser.add_argument("--members", type=int, default=5)
    args = parser.parse_args()

    from mnist_cnn.data import load_mnist
    from mnist_cnn.ensemble import evaluate_ensemble
    from mnist_cnn.training import train

    data, folder, quiet = load_mnist(), Path(tempfile.mkdtemp(prefix="ensemble-choice-")), lambda _: None
    runs = [train(recipe=args.recipe, seed=seed, val_size=5000, limit_test=1, out=str(folder / f"seed-{seed}"),
                  verbose=0, data=data) for seed in range(args.members)]
    seconds = list(itertools.accumulate(sum(r["seconds"] for r in run.history) for run in runs))
    rows = []
    for k in range(1, len(runs) + 1):
        val = evaluate_ensemble(runs[:k], tta=False, data=data, limit_test=1, log=quiet)[1]["validation"]
        rows.append({"members": k, "training s": seconds[k - 1], "val acc": val["ensemble"] * 100,
                     "val acc with TTA": val["ensemble_tta"] * 100,
                     "newest member alone": val["members"][-1] * 100})
        print(table(rows[-1:], list(rows[-1])), flush=True)
    print(table(rows, list(rows[0])))
    print("wrote", write_results(f"ensemble-choice-{args.recipe}", {"argv": sys.argv[1:], "rows": rows}))


if __name__ == "__main__":
    main()
