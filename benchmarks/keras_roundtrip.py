"""Our .keras exports, opened by real Keras: do they predict what we predict?

Two steps, two environments (Keras is not a dependency of mnist-cnn):

    # 1. with mnist-cnn's venv: export the four zoo tutorial models (random weights, BatchNorm statistics
    #    drawn at random so their layout matters) and every Keras fixture file read back through us,
    #    with our softmax on MNIST test images 0-199 in ours.npz
    python benchmarks/keras_roundtrip.py export /tmp/keras-roundtrip
    # 2. with a Keras 3 venv (pip install keras jax h5py numpy): load each file with
    #    keras.saving.load_model(safe_mode=True), predict, compare, record
    KERAS_BACKEND=jax /tmp/kerasenv/bin/python benchmarks/keras_roundtrip.py check /tmp/keras-roundtrip

Step 2 writes benchmarks/results/keras-roundtrip.json: per file, the max absolute softmax difference.

The other direction, Keras's files read by us (no Keras needed; the figures in docs/keras.md):

    python benchmarks/keras_roundtrip.py parity benchmarks/results/keras-parity.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ZOO = ("keras-basic", "keras-same", "keras-bn", "keras-dropout")
FIXTURES = Path(os.environ.get("MNIST_CNN_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "fixtures/keras"
RESULT = Path(__file__).parent / "results" / "keras-roundtrip.json"


def parity(out: Path) -> None:
    """Each fixture read by us: max softmax difference from Keras's own predictions, parameters, test accuracy."""
    import torch

    from mnist_cnn.data import load_mnist
    from mnist_cnn.evaluation import evaluate
    from mnist_cnn.keras_io import load_keras
    from mnist_cnn.models import count_params

    expected = np.load(FIXTURES / "expected.npz")
    x = torch.from_numpy(expected["x_test_0_199"]).float().div(255).unsqueeze(1)
    data = load_mnist(test_only=True)
    rows = []
    for path in sorted([*FIXTURES.glob("*.h5"), *FIXTURES.glob("*.keras")]):
        model = load_keras(path)
        diff = float(np.abs(model.predict_proba(x).numpy() - expected[path.name.replace(".", "_")]).max())
        rows.append({"file": path.name, "max_abs_diff": diff, "params": count_params(model.spec)[0],
                     "test_accuracy": evaluate(model, data.x_test, data.y_test)["accuracy"]})
        print(f"{path.name:24s} max abs diff {diff:.1e}  params {rows[-1]['params']:>9,}  "
              f"test accuracy {rows[-1]['test_accuracy']:.4f}")
    out.write_text(json.dumps({"what": "Keras's files read by mnist-cnn: softmax on MNIST test images 0-199 against "
                                       "Keras's model.predict (expected.npz); accuracy on all 10,000 test images",
                               "files": rows}, indent=2) + "\n")


def export(out: Path) -> None:
    import torch

    from mnist_cnn.keras_io import load_keras, write_keras
    from mnist_cnn.models import build_model

    if not FIXTURES.is_dir():
        sys.exit(f"no Keras fixtures at {FIXTURES}: set MNIST_CNN_SHARED to the folder holding fixtures/keras")
    images = np.load(FIXTURES / "expected.npz")["x_test_0_199"]
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    models = {}
    for i, name in enumerate(ZOO):
        torch.manual_seed(i)
        model = build_model(name)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):  # statistics Keras must place right
                for t, (low, high) in zip((module.weight, module.bias, module.running_mean, module.running_var),
                                          ((0.5, 1.5), (-0.5, 0.5), (-0.5, 0.5), (0.5, 2.0))):
                    t.data.uniform_(low, high)
        models[name] = model
    for path in sorted([*FIXTURES.glob("*.h5"), *FIXTURES.glob("*.keras")]):
        models[f"import-{path.name}"] = load_keras(path)
    out.mkdir(parents=True, exist_ok=True)
    ours = {"x": images}
    for name, model in models.items():
        write_keras(model, out / f"{name}.keras")
        ours[name] = model.predict_proba(x).numpy()
        ours[f"{name}:flat"] = np.array(len(model.spec.input_shape) == 1)
    np.savez(out / "ours.npz", **ours)
    print(f"wrote {len(models)} .keras files and ours.npz to {out}")


def check(out: Path) -> None:
    import keras

    ours = np.load(out / "ours.npz")
    x = ours["x"].astype("float32") / 255
    rows = []
    for path in sorted(out.glob("*.keras")):
        name = path.stem
        model = keras.saving.load_model(path, safe_mode=True)
        inputs = x.reshape(len(x), 784) if ours[f"{name}:flat"] else x[..., None]
        theirs = model.predict(inputs, verbose=0)
        diff = float(np.abs(theirs - ours[name]).max())
        agree = float((theirs.argmax(1) == ours[name].argmax(1)).mean())
        rows.append({"file": path.name, "keras_params": int(model.count_params()), "max_abs_diff": diff,
                     "argmax_agreement": agree})
        print(f"{path.name:40s} params {model.count_params():>9,}  max abs diff {diff:.2e}  argmax agree {agree:.3f}")
    result = {"what": "our .keras exports loaded by keras.saving.load_model(safe_mode=True); softmax on MNIST test "
                      "images 0-199 compared with ours", "keras": keras.__version__,
              "backend": keras.backend.backend(), "python": sys.version.split()[0], "numpy": np.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "max_abs_diff_all": max(r["max_abs_diff"] for r in rows), "files": rows}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"max over all files: {result['max_abs_diff_all']:.2e}; wrote {RESULT}")


if __name__ == "__main__":
    steps = {"export": export, "check": check, "parity": parity}
    if len(sys.argv) != 3 or sys.argv[1] not in steps:
        sys.exit(__doc__)
    steps[sys.argv[1]](Path(sys.argv[2]))
