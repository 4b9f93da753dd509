"""Train each tutorial recipe on the full bundled MNIST and print what the tutorials promised next to ours.

    python benchmarks/reproduce.py                       # every named model, its own recipe
    python benchmarks/reproduce.py --models keras-basic mlp --precision bf16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import steady_median, table, write_results  # noqa: E402

from mnist_cnn import MODELS, load_mnist, make_config, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs (quick checks)")
    args = parser.parse_args()
    data = load_mnist()
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as out:
            config = make_config(model=name, seed=args.seed, precision=args.precision, epochs=args.epochs, out=out)
            run = train(config, data)
        per_epoch = steady_median([r["seconds"] for r in run.history])
        n_train = 60_000 - (config.val_size or int(60_000 * (config.validation_split or 0)))
        rows.append({"model": name, "params": run.num_params, "epochs": len(run.history),
                     "precision": config.precision, "s/epoch": per_epoch, "images/s": n_train / per_epoch,
                     "test_acc": run.metrics["accuracy"] * 100, "tutorial_acc": MODELS[name].tutorial_accuracy})
        print(table(rows[-1:], list(rows[-1])), flush=True)
    print()
    print(table(rows, list(rows[0])))
    print("wrote", write_results("reproduce", {"argv": sys.argv[1:], "rows": rows}))


if __name__ == "__main__":
    main()
