"""Each trick of a recipe, measured over seeds on the validation split (the last 5,000 training images), never on
the test set: the recipe as it is, then one change at a time, and shift TTA on the recipe's own models.

    python benchmarks/tricks.py                          # the fast recipe, 5 seeds
    python benchmarks/tricks.py --recipe minute --only recipe no-augment no-label-smoothing
    python benchmarks/tricks.py --only recipe pool-after-conv former-fast-2-epochs --name tricks-fast-layouts

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

BN = {"type": "BatchNormalization", "momentum": 0.9}
RELU = {"type": "Activation", "activation": "relu"}


def keras_momentum(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recipe's model with Keras's BatchNorm momentum (0.99) in place of its 0.9."""
    return [{**layer, "momentum": 0.99} if layer["type"] == "BatchNormalization" else layer for layer in layers]


def pool_after_conv(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """fast-cnn with its second conv 'same' and a max-pool after it (7x7 -> 3x3), as its first version had."""
    conv2 = next(i for i, layer in enumerate(layers) if layer["type"] == "Conv2D" and i > 0)
    return [*layers[:conv2], {**layers[conv2], "padding": "same"}, {"type": "MaxPooling2D"}, *layers[conv2 + 1:]]


def former_fast_cnn(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """fast-cnn before 2026-12-03: a 5x5 conv of 32 at 14x14 (1.4 M multiply-adds an image against 0.3 M)."""
    conv = {"type": "Conv2D", "kernel_size": 5}
    return [{**conv, "filters": 16, "strides": 2, "padding": "same"}, BN, RELU, {**conv, "filters": 32},
            {"type": "MaxPooling2D"}, BN, RELU, {"type": "Flatten"}, layers[-1]]


# one change each against the recipe, given explicitly (an option left out would take the model's recipe
# value again); "layers" rewrites the model
VARIANTS: dict[str, dict[str, Any]] = {
    "recipe": {},
    "no-label-smoothing": {"label_smoothing": 0.0},
    "constant-lr": {"schedule": "constant"},
    "cosine-lr": {"schedule": "cosine"},
    "ema-0.99": {"ema": 0.99},
    "batch-256": {"batch_size": 256},
    "batch-64": {"batch_size": 64},
    "no-augment": {"augment": {}},
    "keras-bn-momentum": {"layers": keras_momentum},
    "bf16": {"precision": "bf16"},
    "pool-after-conv": {"layers": pool_after_conv},
    "former-fast-2-epochs": {"layers": former_fast_cnn, "epochs": 2, "batch_size": 256, "lr": 2e-2},
}
LAYOUTS = ("pool-after-conv", "former-fast-2-epochs")  # fast-cnn's own alternatives: not in the default run


def run_variant(recipe: str, change: dict[str, Any], seed: int, folder: Path) -> dict[str, float]:
    from mnist_cnn.data import load_mnist
    from mnist_cnn.ensemble import evaluate_ensemble
    from mnist_cnn.training import make_config, train
    from mnist_cnn.zoo import get_spec

    base = make_config(recipe=recipe).to_dict()
    options = {k: v for k, v in {**base, **change}.items() if v is not None and k not in ("layers", "recipe")}
    if "layers" in change:
        spec = get_spec(base["model"]).to_dict()
        options["spec"] = {**spec, "layers": change["layers"](spec["layers"])}
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
    parser.add_argument("--name", help="results file name (default: tricks-RECIPE)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tricks-"))
    rows = []
    for name in args.only or [v for v in VARIANTS if v not in LAYOUTS]:
        runs = [run_variant(args.recipe, VARIANTS[name], seed, folder) for seed in range(args.seeds)]
        accuracy = [r["val_acc"] for r in runs]
        rows.append({"variant": name, "val acc (mean)": statistics.mean(accuracy),
                     "min": min(accuracy), "max": max(accuracy),
                     "with shift TTA (mean)": statistics.mean(r["val_acc_tta"] for r in runs),
                     "epoch-end row (mean)": statistics.mean(r["val_acc_epoch_end"] for r in runs),
                     "train s (median)": statistics.median(r["train_s"] for r in runs), "runs": runs})
        print(table(rows[-1:], [c for c in rows[-1] if c != "runs"]), flush=True)
    print(table(rows, [c for c in rows[0] if c != "runs"]))
    print("wrote", write_results(args.name or f"tricks-{args.recipe}", {"argv": sys.argv[1:], "rows": rows}))


if __name__ == "__main__":
    main()
