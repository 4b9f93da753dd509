"""Each trick of a recipe, measured over seeds on the validation split (the last 5,000 training images), never on
the test set: the recipe as it is, then one change at a time, and shift TTA on the recipe's own models.

    python benchmarks/tricks.py                          # the fast recipe, 5 seeds
    python benchmarks/tricks.py --recipe minute --seeds 5 --only recipe no-augment no-label-smoothing

A trick stays in a recipe when taking it out costs validation accuracy beyond the seeds' spread, or time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_results  # noqa: E402

# one change each against the recipe; `None` removes an option (back to its default)
VARIANTS: dict[str, dict[str, Any]] = {
    "recipe": {},
    "no-label-smoothing": {"label_smoothing": 0.0},
    "constant-lr": {"schedule": "constant"},
    "cosine-lr": {"schedule": "cosine"},
    "ema-0.99": {"ema": 0.99},
    "batch-256": {"batch_size": 256},
    "batch-64": {"batch_size": 64},
    "no-augment": {"augment": None},
    "keras-bn-momentum": {"model_layers": "keras-momentum"},
    "bf16": {"precision": "bf16"},
}


def spec_with_keras_momentum(model: str) -> dict[str, Any]:
    """The recipe's model with Keras's BatchNorm momentum (0.99) in place of its 0.9."""
    from mnist_cnn.zoo import get_spec

    spec = get_spec(model).to_dict()
    for layer in spec["layers"]:
        if layer["type"] == "BatchNormalization":
            layer["momentum"] = 0.99
    return spec


def run_variant(recipe: str, change: dict[str, Any], seed: int, folder: Path) -> dict[str, float]:
    from mnist_cnn.data import load_mnist
    from mnist_cnn.ensemble import evaluate_ensemble
    from mnist_cnn.training import make_config, train

    base = make_config(recipe=recipe).to_dict()
    options = {k: v for k, v in {**base, **change}.items() if v is not None and k not in ("model_layers", "recipe")}
    if change.get("model_layers") == "keras-momentum":
        options["spec"] = spec_with_keras_momentum(base["model"])
    out = folder / f"{recipe}-{seed}-{len(list(folder.iterdir()))}"
    run = train(**{**options, "val_size": 5000, "seed": seed, "out": str(out), "verbose": 0, "limit_test": 1})
    # the final model's (after any BatchNorm re-estimation), as a user gets it; the last epoch's row is before it
    val = evaluate_ensemble([run], tta=True, data=load_mnist(), limit_test=1, log=lambda _: None)[1]["validation"]
    return {"val_acc": val["members"][0] * 100, "val_acc_tta": val["ensemble_tta"] * 100,
            "val_acc_epoch_end": run.history[-1]["val_accuracy"] * 100,
            "train_s": sum(r["seconds"] for r in run.history)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="these variants only")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tricks-"))
    rows = []
    for name in args.only or VARIANTS:
        runs = [run_variant(args.recipe, VARIANTS[name], seed, folder) for seed in range(args.seeds)]
        accuracy = [r["val_acc"] for r in runs]
        rows.append({"variant": name, "val acc (mean)": statistics.mean(accuracy),
                     "min": min(accuracy), "max": max(accuracy),
                     "with shift TTA (mean)": statistics.mean(r["val_acc_tta"] for r in runs),
                     "epoch-end row (mean)": statistics.mean(r["val_acc_epoch_end"] for r in runs),
                     "train s (median)": statistics.median(r["train_s"] for r in runs), "runs": runs})
        print(table(rows[-1:], [c for c in rows[-1] if c != "runs"]), flush=True)
    print(table(rows, [c for c in rows[0] if c != "runs"]))
    print("wrote", write_results(f"tricks-{args.recipe}", {"argv": sys.argv[1:], "rows": rows}))


if __name__ == "__main__":
    main()
