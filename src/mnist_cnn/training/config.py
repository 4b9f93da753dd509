"""Every training option, declared once (type, default, help, flag, check), and `make_config` that fills them.

Defaults <- the model's tutorial recipe <- a named recipe <- explicit values. No torch here: the CLI builds its
flags and checks a config before paying for the import.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..documents import read_document
from ..errors import MnistCnnError
from ..spec import ModelSpec, parse_spec
from ..zoo import RECIPES, get_spec, recipe_for
from .options import (
    COUNT,
    FINITE,
    POSITIVE,
    Check,
    OptionError,
    check,
    declaration,
    escape,
    interval,
    literal,
    number,
    one_of,
    option,
    optional,
    whole,
)

DEFAULT_LR = {"rmsprop": 1e-3, "adam": 1e-3, "sgd": 1e-2}  # Keras's, per optimiser
SCHEDULES = ("constant", "exponential", "cosine", "onecycle", "plateau")
MONITORS = ("val_loss", "val_accuracy")
PRECISIONS = ("auto", "fp32", "bf16")
BN_RECALIBRATE = ("auto", "on", "off")
_MODEL_HELP = "a named model (see `mnist-cnn models`) or a .toml/.json/.yaml spec file"
_DATA_HELP = ("a directory of IDX files or a .npz file, or EMNIST, Kuzushiji, Quick, Draw! and image-folder sets "
              "(docs/datasets.md)")


def _device_name(value: Any) -> bool:
    return isinstance(value, str) and (value in ("auto", "cpu", "cuda") or value.startswith("cuda:"))


@dataclass
class TrainConfig:
    """Every training option; named models and recipes fill these, explicit values win."""

    model: str = option("keras-basic", _MODEL_HELP, elsewhere={"ensemble": "model of the trained members"})
    recipe: str | None = option(None, "a named recipe (model + optimiser + schedule + augmentation + epochs), or a "
                                      "recipe file such as the best_recipe.json of `mnist-cnn tune`",
                                none_means="the model's own",
                                elsewhere={"ensemble": "recipe of the trained members (default with --train: best)"})
    model_options: dict[str, Any] = option(factory=dict, compound=("kernel_size", "filters", "no_dropout"))
    data: str | None = option(None, _DATA_HELP, none_means="the bundled MNIST",
                              checks=[optional(Check(lambda v: isinstance(v, (str, os.PathLike)), "must be a path"))],
                              elsewhere={"ensemble": None, "experiment": None})
    epochs: int = option(5, "epochs to train", checks=[POSITIVE],
                         elsewhere={"ensemble": "epochs of the trained members (default: the recipe's)",
                                    "experiment": "override every run's epochs"})
    batch_size: int = option(64, "images per step", checks=[POSITIVE])
    optimizer: str = option("rmsprop", "with Keras's defaults", choices=tuple(DEFAULT_LR), checks=[one_of(DEFAULT_LR)])
    lr: float | None = option(None, "learning rate", none_means="Keras's default for the optimizer",
                              checks=[optional(interval(0, 10))])
    seed: int = option(0, "seed of the weights, the shuffling, the augmentation and dropout",
                       checks=[Check(lambda v: whole(v) and 0 <= v < 2**32, "must be an integer from 0 to 2**32 - 1")],
                       elsewhere={"ensemble": "seed of the first trained member ({default})"})
    # Keras's validation_split (the last fraction of the training data), or an explicit count (5000: 55,000/5,000)
    validation_split: float | None = option(None, "the last fraction of the training data validates", group="val",
                                            none_means="no validation set",
                                            checks=[optional(Check(number, "must be a fraction in [0, 1)"))])
    val_size: int | None = option(None, "the last N training images validate (e.g. 5000)", group="val",
                                  none_means="no validation set",
                                  checks=[optional(Check(whole, "must be a whole number"))],
                                  elsewhere={"ensemble": "the last N training images validate the trained members"})
    limit_train: int | None = option(None, "use only the first N training images", none_means="every image",
                                     checks=[optional(POSITIVE)],
                                     elsewhere={"ensemble": "train the members on the first N training images",
                                                "experiment": "train every run on the first N training images"})
    limit_test: int | None = option(None, "evaluate on the first N test images", none_means="every image",
                                    checks=[optional(POSITIVE)],
                                    elsewhere={"ensemble": "evaluate members and ensemble on the first N test images",
                                               "experiment": "evaluate every run on the first N test images"})
    out: str | None = option(None, "run directory", flags=("--out", "--save-model"), none_means="runs/MODEL-TIMESTAMP",
                             checks=[optional(Check(lambda v: isinstance(v, (str, os.PathLike)),
                                                    "must be a folder's path"))])
    augment: dict[str, float] | None = option(None, compound=("rotation", "shift", "shear", "zoom"))
    schedule: str = option("constant", "plateau: Keras's ReduceLROnPlateau on --monitor, needs a validation set",
                           choices=SCHEDULES, checks=[one_of(SCHEDULES)])
    lr_decay: float = option(0.95, "exponential schedule: the factor per epoch", checks=[interval(0, 1, True)])
    # the "plateau" schedule is Keras's ReduceLROnPlateau on `monitor`, with its defaults
    lr_factor: float = option(0.1, "plateau schedule: lr *= FACTOR on a plateau", metavar="FACTOR",
                              checks=[interval(0, 1)])
    lr_patience: int = option(10, "plateau schedule: epochs without improvement before the lr drops", metavar="EPOCHS",
                              checks=[COUNT])
    lr_min_delta: float = option(1e-4, "plateau schedule: a smaller change of --monitor is no improvement",
                                 checks=[FINITE])
    lr_cooldown: int = option(0, "plateau schedule: Keras's cooldown, the N - 1 epochs after a drop are not counted",
                              metavar="N", checks=[COUNT])
    min_lr: float = option(0.0, "plateau schedule: the lr's floor", checks=[FINITE])
    label_smoothing: float = option(0.0, "the cross-entropy's label smoothing, as Keras's label_smoothing",
                                    checks=[interval(0, 1, closed_low=True)])
    weight_decay: float = option(0.0, "decoupled weight decay, w -= lr * wd * w each step, as Keras 3's optimizers' "
                                 "weight_decay", checks=[interval(0, 1, closed_low=True)])
    ema: float | None = option(None, "evaluate an exponential moving average of the weights, e.g. 0.999",
                               none_means="no average", checks=[optional(interval(0, 1))])
    early_stopping: int | None = option(None, "stop after PATIENCE epochs without improvement of --monitor (Keras's "
                                        "EarlyStopping); needs a validation set", metavar="PATIENCE",
                                        none_means="no early stopping",
                                        checks=[optional(Check(lambda v: whole(v) and v >= 1,
                                                               "must be a positive patience"))])
    monitor: str = option("val_loss", "what --early-stopping, --restore-best and the plateau schedule watch",
                          choices=MONITORS, checks=[one_of(MONITORS, "must be val_loss or val_accuracy")])
    min_delta: float = option(0.0, "a smaller change of --monitor is no improvement (Keras's EarlyStopping "
                              "min_delta; {default})", checks=[FINITE])
    restore_best: bool = option(False, "end with the best weights on --monitor (Keras's restore_best_weights)",
                                switch=True)
    # Keras's moving statistics (momentum 0.99) lag far behind weights trained a few hundred steps (keras-bn, 282
    # steps: 32% on the test set, 98.6% re-estimated); training/batchnorm.py, docs/training.md
    bn_recalibrate: str = option("auto", "re-estimate the BatchNorm statistics of the final weights on up to 4,096 "
                                 "training images before saving and testing; auto: where training was too short for "
                                 "the moving averages to catch up, off: Keras's behaviour", choices=BN_RECALIBRATE,
                                 checks=[one_of(BN_RECALIBRATE)])
    # auto = bf16 where the hardware has it (AVX-512 BF16, CUDA): measured no loss of accuracy
    precision: str = option("auto", "auto: bfloat16 autocast where the hardware supports it", choices=PRECISIONS,
                            checks=[one_of(PRECISIONS, "must be auto, fp32 or bf16")],
                            elsewhere={"ensemble": None, "experiment": None})
    threads: int | None = option(None, "CPU threads", none_means="every core, shared among torchrun's local processes",
                                 placement=True, elsewhere={"ensemble": None, "experiment": None},
                                 checks=[optional(POSITIVE), optional(Check(lambda v: v <= 1024,
                                                                            "must be at most 1024"))])
    device: str = option("auto", "auto, cpu or cuda", placement=True, elsewhere={"ensemble": None, "experiment": None},
                         checks=[Check(_device_name, "must be auto, cpu or cuda")])
    channels_last: bool = option(True, "keep PyTorch's default NCHW layout", switch=True)
    # one CUDA device: each full batch's forward and backward replayed as one graph (keras-basic, H100: 0.34 ms/step
    # against 2.94)
    cuda_graph: bool = option(True, "on CUDA, launch each step's kernels one by one instead of replaying them as one "
                              "CUDA graph", switch=True, placement=True)
    checkpoint_every: int | None = option(None, "also checkpoint every N steps", metavar="STEPS",
                                          none_means="at each epoch's end only", checks=[optional(POSITIVE)])
    init_from: str | None = option(None, "start from the weights of a run, its weights file or a Keras .h5/.keras file "
                                   "(fine-tuning): the architecture is theirs", metavar="PATH",
                                   none_means="the seed's initial weights",
                                   checks=[optional(Check(lambda v: isinstance(v, (str, os.PathLike)),
                                                          "must be a path"))])
    verbose: int = option(1, cli=False)
    # the architecture itself when it was given in Python (a ModelSpec, a list of layers, a dict): `model` is its name
    spec: dict[str, Any] | None = option(None, cli=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_spec(self, num_classes: int = 10) -> ModelSpec:
        """The architecture this config trains; a named model's head gives `num_classes` scores (the data's)."""
        if self.spec is not None:
            return parse_spec(self.spec, "config spec")
        return get_spec(self.model, num_classes=num_classes, **self.model_options)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# what a config.json written before an option existed means: the behaviour of the version that wrote it
SAVED_WITHOUT = {"bn_recalibrate": "off"}
# where a run trains, not what it trains: a resume may move it (a GPU run finished on a laptop, say)
PLACEMENT = tuple(name for name, f in FIELDS.items() if declaration(f).placement)


def make_config(model: str | os.PathLike | ModelSpec | list | dict | None = None,
                recipe: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
    """Defaults <- the model's tutorial recipe <- the named recipe or recipe file <- explicit values (None = not
    given).

    `model`: a named model, a spec file's path, or the architecture itself: a ModelSpec, a list of layer dicts
    (the spec file's vocabulary) or a spec dict; the run records it in spec.json and names it by its spec name."""
    named = _recipe_values(recipe)
    recipe = None if recipe is None else str(recipe)
    given = {k: _plain(v) for k, v in overrides.items() if v is not None}
    if isinstance(model, (ModelSpec, list, dict)):
        raw = {"name": "custom", **model} if isinstance(model, dict) else {"name": "custom", "layers": model}
        spec = model if isinstance(model, ModelSpec) else parse_spec(raw, "model")
        model, given["spec"] = spec.name, spec.to_dict()
    if model is not None and named.get("model") not in (None, model):  # a recipe is tuned for its own model
        raise OptionError(f"{{recipe}} {recipe} trains {named['model']}; give {{recipe}} or {{model}} "
                          f"{escape(str(model))}, not both")
    model = model or named.pop("model", None) or TrainConfig.model
    named.pop("model", None)
    if not isinstance(model, (str, os.PathLike)):
        raise MnistCnnError(f"model must be a name, a spec file's path, a ModelSpec, a list of layers or a spec dict, "
                            f"got {reprlib.repr(model)}")
    for key in ("data", "init_from"):  # the run records where its data and its start are from anywhere
        if isinstance(given.get(key), (str, os.PathLike)):
            from ..data import recorded_path  # torch: only when a path is given

            given[key] = recorded_path(given[key])
    values = {**({} if "spec" in given else recipe_for(str(model))), **named, **given}
    for one, other in (("validation_split", "val_size"), ("val_size", "validation_split")):
        if one in given and other not in given:  # the user's way of splitting replaces the recipe's
            values.pop(other, None)
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise MnistCnnError(f"unknown training option {unknown[0]!r}")
    config = TrainConfig(model=str(model), recipe=recipe, **values)
    validate(config)
    return config


def _recipe_values(recipe: str | os.PathLike | None) -> dict[str, Any]:
    """A named recipe's settings, or those of a recipe file (.toml/.json/.yaml: any training option but out, e.g.
    the best_recipe.json that `mnist-cnn tune` writes)."""
    if recipe is None or str(recipe) in RECIPES:
        return dict(RECIPES.get(str(recipe), {}))
    path = Path(recipe)
    if path.suffix.lower() not in (".toml", ".json", ".yaml", ".yml"):
        raise MnistCnnError(f"unknown recipe {str(recipe)!r}: expected one of {', '.join(RECIPES)}, or a "
                            ".toml/.json/.yaml recipe file")
    values = read_document(path, "recipe")  # within the documents' size budget
    if not isinstance(values, dict):
        raise MnistCnnError(f"{path}: a recipe must be a table of training options, got {type(values).__name__}")
    unknown = sorted(set(values) - (set(FIELDS) - {"recipe", "out"}))
    if unknown:
        raise MnistCnnError(f"{path}: {unknown[0]!r} is not a training option a recipe may set")
    return values


def _plain(value: Any) -> Any:
    """numpy's scalars (from a sweep over np.arange, say) as the Python numbers config.json holds."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, (int, float)) else value


def validate(c: TrainConfig) -> None:
    """Options are checked here, at the boundary, with the bad value in the message."""
    for name, f in FIELDS.items():
        check(name, getattr(c, name), declaration(f).checks)
    if not (isinstance(c.model, str) and isinstance(c.model_options, dict)):
        raise OptionError("{model} must be a name or a spec file (with a dict of model options), got "
                          + literal((c.model, c.model_options)))
    if c.spec is not None:
        if c.model_options:
            raise OptionError("{model_options} apply to named models, not to a spec given in Python")
        parse_spec(c.spec, "spec")
    watchers = [flag for flag, on in (("{early_stopping}", c.early_stopping), ("{restore_best}", c.restore_best),
                                      ("{schedule} plateau", c.schedule == "plateau")) if on]
    # the split's range depends on the data: split_validation checks it
    if watchers and not (c.validation_split or c.val_size):
        raise OptionError(f"{watchers[0]} needs a validation set: add {{validation_split}} or {{val_size}}")
    if c.augment:
        from ..augment import Augment  # torch: only for a config that augments

        Augment.from_dict(c.augment)


