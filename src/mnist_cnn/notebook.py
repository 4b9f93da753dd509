"""The Keras-shaped object API for notebooks, over the same engine as the CLI (the run directory stays the record).

    m = mnist_cnn.Model("keras-bn")            # a zoo name, a spec file, a ModelSpec or a list of layer dicts
    m.summary()                                # shown as a table
    h = m.fit(epochs=2, validation_split=0.1, out="runs/bn")   # no x: the bundled MNIST; a re-run cell reuses it
    h.history["val_accuracy"]; m.evaluate(); m.predict(x_test[:5]); m.save("bn.safetensors")
    m2 = mnist_cnn.load("runs/bn")

Arrays go through MnistData's rules (NCHW or NHWC, uint8 or pixels / 255, numpy, tensors or PIL images, integer or
one-hot labels), so every method takes what a Keras tutorial leaves in x_train / y_train.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .atomic import atomic_write_json
from .budgets import describe
from .data import MnistData, load_mnist, recorded_source
from .display import Text, history_table
from .errors import MnistCnnError
from .evaluation import Metrics, evaluate
from .inputs import as_model_input
from .keras_io import write_keras
from .models import SpecModel, build_model, count_params, summary
from .predict import predict_proba
from .reuse import config_differences, reuse_or_train
from .runs import PICKLE_SUFFIXES, Run, save_weights, write_history
from .sources import open_model
from .spec import ModelSpec, parse_spec
from .training import make_config, train
from .training.optim import DEFAULT_LR
from .zoo import get_spec

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy")  # one-hot labels become class numbers


class History:
    """What `fit` returns, as Keras's: `.history` maps each metric to its per-epoch list, `.epoch` counts from 0."""

    def __init__(self, rows: Sequence[dict[str, Any]]):
        self.rows = [dict(row) for row in rows]
        self.epoch = [row["epoch"] - 1 for row in self.rows]
        keys = dict.fromkeys(k for row in self.rows for k in row if k != "epoch")
        self.history: dict[str, list[Any]] = {k: [row.get(k) for row in self.rows] for k in keys}

    def to_pandas(self) -> pd.DataFrame:
        """One row per epoch, indexed by epoch (1, 2, ...); needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise MnistCnnError("History.to_pandas needs pandas: pip install pandas") from None
        return pd.DataFrame(self.rows).set_index("epoch")

    def plot(self) -> Figure:
        """Loss and accuracy per epoch, training against validation."""
        from .explain import plot_curves

        return plot_curves(self.rows)

    def __repr__(self) -> str:
        last = self.rows[-1] if self.rows else {}
        shown = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in last)
        return f"History({len(self.rows)} epoch{'s' if len(self.rows) != 1 else ''}" + (f"; last: {shown})"
                                                                                          if shown else ")")

    def _repr_html_(self) -> str:
        return history_table(self.rows)


def _spec(model: str | os.PathLike | ModelSpec | Sequence[Mapping[str, Any]] | Mapping[str, Any],
          name: str | None, options: dict[str, Any]) -> ModelSpec:
    """A zoo name or spec file (with its options), a ModelSpec, a spec dict, or a list of layer dicts."""
    if isinstance(model, (str, os.PathLike)):
        return get_spec(str(model), **options)
    if options:
        raise MnistCnnError(f"model options {sorted(options)} apply to named models, not to a spec given in Python")
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, Mapping):
        return parse_spec({"name": name, **model} if name else model, "Model(...)")
    if isinstance(model, Sequence) and all(isinstance(layer, Mapping) for layer in model):
        return parse_spec({"name": name or "model", "layers": list(model)}, "Model(...)")
    raise MnistCnnError(f"Model takes a model's name, a spec file, a ModelSpec or a list of layer dicts, got "
                        f"{type(model).__name__}")


def _array(x: Any) -> np.ndarray:
    """numpy, a tensor, a PIL image or a list of PIL images, as a numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, (list, tuple)) and x and not isinstance(x[0], (int, float, list, tuple, np.ndarray)):
        return np.stack([np.asarray(item) for item in x])  # PIL images
    return np.asarray(x)


def _in_memory(x: Any, y: Any, validation_data: tuple[Any, Any] | None,
               limit_train: int | None) -> tuple[MnistData | None, int]:
    """The training set fit was given (None: the bundled MNIST as it is) and how many of its last images are
    validation_data's: they go after the training images, as the run's val_size (validation_split's place)."""
    if (x is None) != (y is None):
        raise MnistCnnError("fit: give x and y together (or neither, for the bundled MNIST)")
    if x is None and validation_data is None:
        return None, 0
    test = load_mnist(test_only=True)  # the run is tested on MNIST's test set, as the tutorials are
    if x is None:
        train_set = load_mnist()
        x_train, y_train = train_set.x_train, train_set.y_train
    else:
        # MnistData's rules for a Keras tutorial's arrays (its fields are annotated as the tensors they become)
        given = MnistData(_array(x), _array(y), test.x_test[:1], test.y_test[:1], "x, y")  # type: ignore[arg-type]
        x_train, y_train = given.x_train, given.y_train
    x_train, y_train = x_train[:limit_train], y_train[:limit_train]
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise MnistCnnError("validation_data must be a pair (x_val, y_val)")
        val = MnistData(_array(validation_data[0]), _array(validation_data[1]),  # type: ignore[arg-type]
                        test.x_test[:1], test.y_test[:1], "validation_data")
        x_train, y_train = torch.cat([x_train, val.x_train]), torch.cat([y_train, val.y_train])
    digest = hashlib.sha256(x_train.numpy().tobytes() + y_train.numpy().tobytes()).hexdigest()[:16]
    # the source names the content: the same arrays are the same config, so a re-run cell reuses its run
    data = MnistData(x_train, y_train, test.x_test, test.y_test, source=f"arrays {digest}")
    return data, 0 if validation_data is None else len(val.x_train)


class Model:
    """A model as Keras has one: summary, compile, fit, evaluate, predict, save; `mnist_cnn.load` reopens it.

    `model`: a zoo name (with its options, e.g. `Model("keras-dropout", kernel_size=3)`), a spec file, a ModelSpec,
    a spec dict or a list of layer dicts in the spec vocabulary (then `name=` names it). Until `fit`, the weights
    are Keras's initialisation drawn from seed 0; after it, `run` is the run directory's record."""

    def __init__(self, model: Any = "keras-basic", *, name: str | None = None, **model_options: Any):
        self.spec = _spec(model, name, model_options)
        self._name = str(model) if isinstance(model, (str, os.PathLike)) else None  # its recipe comes with it
        self._model_options = model_options
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model: SpecModel = build_model(self.spec)
        self.run: Run | None = None
        self.history: History | None = None
        self._compiled: dict[str, Any] = {}

    @classmethod
    def from_run(cls, run: Run) -> Model:
        model = cls(run.spec)
        model.model, model.run, model.history = run.model, run, History(run.history)
        return model

    def summary(self) -> Text:
        """Keras's summary table (prints as text, shows as a table)."""
        return summary(self.spec)

    def compile(self, optimizer: str = "rmsprop", loss: str = "sparse_categorical_crossentropy",
                metrics: Sequence[str] | None = None, *, learning_rate: float | None = None) -> None:
        """Record the optimiser (and learning rate) the next fit uses, as Keras's compile does; the loss is always
        cross-entropy on the logits and accuracy is always reported."""
        if optimizer not in DEFAULT_LR:
            raise MnistCnnError(f"compile: optimizer must be one of {', '.join(map(repr, DEFAULT_LR))}, got "
                                f"{optimizer!r}")
        if loss not in LOSSES:
            raise MnistCnnError(f"compile: loss must be {' or '.join(map(repr, LOSSES))} (the one loss mnist-cnn "
                                f"trains with), got {loss!r}")
        unknown = [m for m in metrics or () if m not in ("accuracy", "acc")]
        if unknown:
            raise MnistCnnError(f"compile: metrics may be ['accuracy'] (always reported), got {unknown[0]!r}")
        self._compiled = {"optimizer": optimizer, "lr": learning_rate}

    def fit(self, x: Any = None, y: Any = None, *, epochs: int | None = None, batch_size: int | None = None,
            validation_split: float | None = None, validation_data: tuple[Any, Any] | None = None,
            augment: dict[str, float] | None = None, recipe: str | None = None, early_stopping: int | None = None,
            restore_best: bool | None = None, out: str | os.PathLike | None = None, overwrite: bool = False,
            resume: bool | str | os.PathLike | None = None, verbose: int = 1, **options: Any) -> History:
        """Train (no x: on the bundled MNIST) into the run directory `out` and test once on MNIST's test set.

        Training starts from the initial weights of `seed`, as `mnist-cnn train` does. A folder holding a finished
        run of this very config is reused (a re-run cell trains nothing); one holding another run is refused unless
        `overwrite=True`, or `resume=True` continues it (to `epochs` in all). `options`: any other training option
        (seed, lr, optimizer, schedule, limit_train, limit_test, val_size, threads, ...)."""
        if validation_data is not None and (validation_split or options.get("val_size")):
            raise MnistCnnError("fit: give validation_data or validation_split / val_size, not both")
        data, val_size = _in_memory(x, y, validation_data, options.get("limit_train"))
        if data is not None:  # limit_train is applied to the arrays, before validation_data joins them
            options.pop("limit_train", None)
        if val_size:
            options["val_size"] = val_size
        given = {"epochs": epochs, "batch_size": batch_size, "validation_split": validation_split, "augment": augment,
                 "early_stopping": early_stopping, "restore_best": restore_best, "verbose": verbose,
                 "out": None if out is None else str(out), **self._compiled, **options}
        model = self._name or self.spec
        config = make_config(model, recipe, model_options=self._model_options or None, **given)
        if data is not None:
            config = dataclasses.replace(config, data=recorded_source(data))
        log = print if verbose else (lambda _line: None)
        if resume:
            run_dir = resume if resume is not True else out or (self.run.path if self.run else None)
            if run_dir is None:
                raise MnistCnnError("fit: resume=True continues the run in out= (or give resume=PATH)")
            run = train(config, data, resume=Path(run_dir), log=log)
        elif overwrite:
            run = train(config, data, overwrite=True, log=log)
        else:
            _refuse_another_run(config)
            run = reuse_or_train(config, data=data, log=log)
        self.model, self.run, self.history = run.model, run, History(run.history)
        return self.history

    def evaluate(self, x: Any = None, y: Any = None, *, batch_size: int | None = None) -> Metrics:
        """Loss, accuracy, per-class numbers and the confusion matrix on (x, y); no x: MNIST's 10,000 test images."""
        if (x is None) != (y is None):
            raise MnistCnnError("evaluate: give x and y together (or neither, for MNIST's test set)")
        if x is None:
            test = load_mnist(test_only=True)
            return evaluate(self.model, test.x_test, test.y_test, batch_size)
        return evaluate(self.model, x, y, batch_size)

    def predict(self, x: Any, *, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities, float32 numpy [N, classes] (one digit [28, 28] is N = 1)."""
        del batch_size  # accepted as Keras does; the batch size that is fastest on the device is used
        return predict_proba(self.model, as_model_input(x, size=self.model.input_size))

    def save(self, path: str | os.PathLike) -> Path:
        """A `.safetensors` path: the weights with their spec (one file); `.keras`: a Keras 3 file that Keras opens;
        any other path: a run directory
        (weights, spec, and the config, history and metrics of the training, if any). Both reopen with load."""
        path = Path(path)
        if path.suffix.lower() == ".keras":  # Keras 3's format: keras.saving.load_model opens it
            return write_keras(self.model, path)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise MnistCnnError(f"{path}: save writes a .safetensors file, a Keras 3 .keras file or a run directory "
                                "(no pickle, and no legacy .h5: use .keras)")
        if path.suffix.lower() == ".safetensors":
            return save_weights(path, self.model)
        save_weights(path / "model.safetensors", self.model)
        atomic_write_json(path / "spec.json", self.spec.to_dict())
        if self.run is not None:
            atomic_write_json(path / "config.json", {**self.run.config, "out": str(path)})
            atomic_write_json(path / "metrics.json", self.run.metrics)
            write_history(path, self.run.history)
        return path

    def __repr__(self) -> str:
        trained = f"run {str(self.run.source)!r}" if self.run else "not trained"
        return f"Model({self.spec.name!r}, {count_params(self.spec)[0]:,} params, {trained})"

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_() + (self.run._repr_html_() if self.run else "<p>not trained</p>")


def _refuse_another_run(config: Any) -> None:
    """A cell re-run with other settings must not train over the run it made before: say how to go on, in Python."""
    differences = config_differences(config)
    if differences and differences != ["out"]:
        shown = ", ".join(differences[:3]) + (", ..." if len(differences) > 3 else "")
        raise MnistCnnError(f"{config.out} holds a run trained with other settings ({shown}): give overwrite=True "
                            f"to replace it, resume=True to continue it, or another out=")


def load(path: str | os.PathLike) -> Model:
    """A Model from a run directory or its weights file (what Model.save and training write)."""
    opened = open_model(path)
    if not isinstance(opened, Run):
        raise MnistCnnError(f"{describe(path)} holds an ensemble, not one model: open it with "
                            "mnist_cnn.open_model(path), which evaluates and predicts as a model does")
    return Model.from_run(opened)


__all__ = ["History", "Model", "load"]
