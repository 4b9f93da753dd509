#!/usr/bin/env python
"""Peer benchmark: the Keras MNIST tutorial CNNs, run on Keras 3 with any backend.

The caller picks the backend with KERAS_BACKEND (tensorflow or jax) and runs this file with the
matching venv from benchmarks/peers/.venvs/ (see setup.sh / README.md):

    KERAS_BACKEND=tensorflow benchmarks/peers/.venvs/keras-tf/bin/python  benchmarks/peers/keras_mnist.py \\
        --model keras-basic --epochs 3 --json-out out.json
    KERAS_BACKEND=jax        benchmarks/peers/.venvs/keras-jax/bin/python benchmarks/peers/keras_mnist.py \\
        --model keras-bn    --epochs 3 --json-out out.json

Models, written the way the Keras tutorials write them:
  keras-basic  Conv2D(32,3,relu) MaxPool(2) Conv2D(64,3,relu) MaxPool(2) Conv2D(64,3,relu) Flatten
               Dense(64,relu) Dense(10,softmax); rmsprop; categorical_crossentropy; batch 64. 93,322 params.
  keras-bn     [Conv32-BN-relu]x2 MaxPool [Conv64-BN-relu]x2 MaxPool Flatten Dense512-BN-relu Dropout(0.2)
               Dense(10,softmax), all 3x3 'valid'; adam; batch 64; with augmentation
               (rotation 8 deg, width/height shift 0.08, shear 0.3, zoom 0.08). 597,738 params.
               Augmentation: by default Keras's own (legacy) ImageDataGenerator, still shipped in Keras 3
               under keras.src.legacy; --augment layers uses the Keras 3 Random* preprocessing layers.

Data: the four MNIST IDX files (gzipped or not) read with numpy + gzip (mnist_idx.py); nothing from
the mnist_cnn package is imported. Input is x/255 as float32 NHWC [N,28,28,1]; labels are one-hot.

Timing: a callback records wall-clock seconds between on_epoch_begin and on_epoch_end for every epoch
(epoch 1 includes tracing / XLA compilation). The 10,000 test images are evaluated once at the end.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # silence TensorFlow's C++ start-up chatter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from mnist_idx import default_data_dir, load_mnist, report, summarise_epochs  # noqa: E402

EXPECTED_PARAMS = {"keras-basic": 93_322, "keras-bn": 597_738}
DEFAULT_BATCH = {"keras-basic": 64, "keras-bn": 64}

# ImageDataGenerator settings used by the keras-bn tutorial.
AUG = dict(rotation_range=8, width_shift_range=0.08, height_shift_range=0.08, shear_range=0.3, zoom_range=0.08)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(EXPECTED_PARAMS), default="keras-basic")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None, help="default: the tutorial's (64)")
    p.add_argument("--data", default=None, help="directory with the 4 MNIST IDX(.gz) files "
                   "(default: src/mnist_cnn/datasets/mnist)")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--json-out", default=None, help="write the result JSON here (also printed to stdout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--augment", choices=["legacy", "layers", "none"], default="legacy",
        help="keras-bn only. 'legacy' (default): Keras's ImageDataGenerator, kept in Keras 3 as "
             "keras.src.legacy.preprocessing.image (what tf.keras.preprocessing.image.ImageDataGenerator "
             "resolves to; per-image numpy/scipy) -- the tutorial's exact augmentation, and the faster "
             "of the two on both backends in our smoke tests; 'layers': Keras 3 preprocessing layers "
             "RandomRotation/RandomTranslation/RandomShear/RandomZoom at the front of the model (active "
             "only in training); 'none': no augmentation.")
    p.add_argument("--threads", type=int, default=None,
                   help="TensorFlow only: set intra/inter-op thread counts (default: TF's own choice)")
    p.add_argument("--verbose", type=int, default=0, help="Keras fit() verbosity (0 = our one line per epoch)")
    p.add_argument("--test-each-epoch", action="store_true", help="also measure test accuracy at each epoch's end, "
                   "outside the timed epoch (a stopwatch for benchmarks/time_to_accuracy.py, never a selection)")
    return p.parse_args(argv)


def build_model(keras, name: str, augment: str):
    L = keras.layers
    if name == "keras-basic":
        model = keras.Sequential([
            keras.Input(shape=(28, 28, 1)),
            L.Conv2D(32, (3, 3), activation="relu"),
            L.MaxPooling2D((2, 2)),
            L.Conv2D(64, (3, 3), activation="relu"),
            L.MaxPooling2D((2, 2)),
            L.Conv2D(64, (3, 3), activation="relu"),
            L.Flatten(),
            L.Dense(64, activation="relu"),
            L.Dense(10, activation="softmax"),
        ], name="keras_basic")
        model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    # keras-bn
    aug_layers = []
    if augment == "layers":
        # Augmentation choice: Keras 3 preprocessing layers (the Keras 3 replacement for the deprecated
        # ImageDataGenerator), set up to match ImageDataGenerator(rotation_range=8, width_shift_range=0.08,
        # height_shift_range=0.08, shear_range=0.3, zoom_range=0.08) as closely as the layers allow:
        #   rotation_range=8 (degrees)   -> RandomRotation(8/360)  (factor is a fraction of a full turn)
        #   width/height_shift_range=.08 -> RandomTranslation(0.08, 0.08)
        #   shear_range=0.3 (DEGREES in ImageDataGenerator, x-shear only) -> RandomShear(x_factor=sin(0.3 deg))
        #   zoom_range=0.08 (zx, zy independent in [0.92, 1.08]) -> RandomZoom(0.08, 0.08)
        # fill_mode='nearest' and bilinear interpolation as ImageDataGenerator's defaults. The layers resample
        # four times (one per layer) where ImageDataGenerator composes one affine transform. They are
        # inactive at inference (evaluate / predict).
        shear = math.sin(math.radians(AUG["shear_range"]))
        aug_layers = [
            L.RandomRotation(AUG["rotation_range"] / 360.0, fill_mode="nearest", interpolation="bilinear"),
            L.RandomTranslation(AUG["height_shift_range"], AUG["width_shift_range"], fill_mode="nearest",
                                interpolation="bilinear"),
            L.RandomShear(x_factor=shear, y_factor=0.0, fill_mode="nearest", interpolation="bilinear"),
            L.RandomZoom(AUG["zoom_range"], AUG["zoom_range"], fill_mode="nearest", interpolation="bilinear"),
        ]

    def conv_bn(filters):
        return [L.Conv2D(filters, (3, 3), padding="valid"), L.BatchNormalization(), L.Activation("relu")]

    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        *aug_layers,
        *conv_bn(32), *conv_bn(32),
        L.MaxPooling2D((2, 2)),
        *conv_bn(64), *conv_bn(64),
        L.MaxPooling2D((2, 2)),
        L.Flatten(),
        L.Dense(512), L.BatchNormalization(), L.Activation("relu"),
        L.Dropout(0.2),
        L.Dense(10, activation="softmax"),
    ], name="keras_bn")
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def main(argv=None) -> int:
    args = parse_args(argv)
    backend_env = os.environ.get("KERAS_BACKEND", "")
    if args.threads and backend_env in ("", "tensorflow"):
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    import keras

    backend = keras.backend.backend()
    backend_pkg = {"tensorflow": ["tensorflow-cpu", "tensorflow"], "jax": ["jax"], "torch": ["torch"]}.get(
        backend, [backend])
    backend_version = None
    for pkg in backend_pkg:
        try:
            backend_version = metadata.version(pkg)
            break
        except metadata.PackageNotFoundError:
            pass
    versions = {"keras": keras.__version__, "backend": backend, backend: backend_version,
                "numpy": np.__version__, "python": platform.python_version()}
    if backend == "jax":
        import jax
        import jaxlib
        versions["jaxlib"] = jaxlib.__version__
        versions["device"] = str(jax.devices()[0].device_kind)

    keras.utils.set_random_seed(args.seed)

    data_dir = Path(args.data) if args.data else default_data_dir()
    t0 = time.perf_counter()
    x_train, y_train, x_test, y_test = load_mnist(data_dir)
    if args.limit_train:
        x_train, y_train = x_train[: args.limit_train], y_train[: args.limit_train]
    x_train = (x_train.astype("float32") / 255.0)[..., None]
    x_test = (x_test.astype("float32") / 255.0)[..., None]
    yoh_train = np.eye(10, dtype="float32")[y_train]
    yoh_test = np.eye(10, dtype="float32")[y_test]
    load_s = time.perf_counter() - t0

    augment = args.augment if args.model == "keras-bn" else "none"
    model = build_model(keras, args.model, augment)
    params = int(model.count_params())
    assert params == EXPECTED_PARAMS[args.model], (
        f"{args.model}: {params} params, expected {EXPECTED_PARAMS[args.model]}")
    batch = args.batch_size or DEFAULT_BATCH[args.model]

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.logs, self.test_accuracy = [], [], []

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            dt = time.perf_counter() - self._t
            self.seconds.append(dt)
            if args.test_each_epoch:  # after the epoch's clock stopped
                self.test_accuracy.append(float(self.model.evaluate(x_test, yoh_test, batch_size=1000, verbose=0)[1]))
            logs = {k: float(v) for k, v in (logs or {}).items()}
            self.logs.append(logs)
            print(f"[{args.model} {backend}] epoch {epoch + 1}/{args.epochs}: {dt:.2f}s "
                  + " ".join(f"{k}={v:.4f}" for k, v in logs.items()), flush=True)

    timer = EpochTimer()
    if augment == "legacy":
        # Augmentation choice: Keras's own ImageDataGenerator, exactly as the tutorial calls it. Keras 3 no
        # longer exports it as keras.preprocessing.image.ImageDataGenerator; it lives on in
        # keras.src.legacy.preprocessing.image (tf.keras.preprocessing.image.ImageDataGenerator points there).
        # Per-image numpy + scipy.ndimage affine transform, fed to fit() as a PyDataset.
        from keras.src.legacy.preprocessing.image import ImageDataGenerator

        datagen = ImageDataGenerator(**AUG)
        flow = datagen.flow(x_train, yoh_train, batch_size=batch, shuffle=True, seed=args.seed)
        model.fit(flow, epochs=args.epochs, steps_per_epoch=len(flow), callbacks=[timer], verbose=args.verbose)
    else:
        model.fit(x_train, yoh_train, batch_size=batch, epochs=args.epochs, shuffle=True,
                  callbacks=[timer], verbose=args.verbose)

    t0 = time.perf_counter()
    test_loss, test_acc = model.evaluate(x_test, yoh_test, batch_size=1000, verbose=0)
    eval_s = time.perf_counter() - t0

    result = {
        "tool": f"keras-{backend}",
        "versions": versions,
        "model": args.model,
        "params": params,
        "epochs": args.epochs,
        "batch_size": batch,
        "optimizer": "rmsprop" if args.model == "keras-basic" else "adam",
        "augmentation": {"none": None, "layers": "keras.layers Random{Rotation,Translation,Shear,Zoom}",
                         "legacy": "legacy ImageDataGenerator"}[augment],
        "n_train": int(len(x_train)),
        "n_test": int(len(x_test)),
        **summarise_epochs(timer.seconds, len(x_train)),
        "test_accuracy": round(float(test_acc), 5),
        "test_loss": round(float(test_loss), 5),
        "history": timer.logs,
        **({"test_accuracy_per_epoch": timer.test_accuracy} if args.test_each_epoch else {}),
        "eval_seconds": round(eval_s, 3),
        "load_seconds": round(load_s, 3),
        "seed": args.seed,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "data": str(data_dir),
    }
    report(result, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
