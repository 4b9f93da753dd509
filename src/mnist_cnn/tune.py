"""Search training and model options with Optuna, on the validation split only; the best trial becomes a recipe.

A search file (TOML, JSON or YAML) holds the options every trial shares and the space to search:

    name = "fast-neighbourhood"    # the study's name in its storage
    objective = "val_accuracy"     # or "val_loss"; read from the validation rows of the history, never the test set
    trials = 20                    # the study's budget, shared by all its workers (--trials)
    timeout = 3600                 # seconds, per worker (--timeout; optional)
    seeds = 1                      # seeds per trial: its score is their mean (--seeds)
    prune = true                   # Optuna's MedianPruner on the first seed's epochs, or
                                   # {startup_trials = 5, warmup_epochs = 0}; false: never
    [base]                         # any training option (recipe, model, epochs, val_size, threads, ...)
    recipe = "fast"
    val_size = 5000                # the objective needs a validation split
    [search]                       # any training or model option; dotted names reach into tables
    lr = {low = 0.005, high = 0.05, log = true}
    batch_size = {choices = [128, 256, 512]}
    label_smoothing = {low = 0.0, high = 0.2}      # floats: a continuous range
    epochs = {low = 1, high = 3}                   # whole numbers: an integer range
    augment.rotation = {low = 0.0, high = 10.0}

Each trial's seeds are normal run directories, OUT/trials/trial-NNNN/seed-S. The study (default: the SQLite
file OUT/study.db) is the record; see mnist_cnn.studies for workers on several machines. At the end OUT holds
best_recipe.json (`mnist-cnn train --recipe OUT/best_recipe.json` trains the best trial again), trials.json,
and trials.png.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json, make_dir
from .data import MnistData, load_mnist
from .documents import read_document
from .errors import MnistCnnError, TrainingInterrupted
from .experiments import _beside, cell_label, make_cell_config, tested_row
from .studies import (
    HEARTBEAT_SECONDS,
    claim_record,
    code_record,
    data_record,
    open_study,
    optuna_module,
    public_url,
    quiet_optuna,
    sqlite_url,
    trials_in,
    worker_name,
)
from .tune_report import format_trials, plot_trials

SEARCH_KEYS = ("name", "description", "objective", "trials", "timeout", "seeds", "prune", "base", "search")
SPEC_KEYS = frozenset({"low", "high", "log", "step", "choices"})
# fixed for a whole study: where runs go, the seeds of a trial, and the data and validation split scores come from
FIXED = ("out", "seed", "verbose", "data", "val_size", "validation_split")
OBJECTIVES = {"val_accuracy": "maximize", "val_loss": "minimize"}
SEARCH_FILE_BUDGET = 1 << 20  # bytes


def load_search(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a search file; spec and data files named in its base are found beside it."""
    path = Path(path)
    if path.is_file() and path.stat().st_size > SEARCH_FILE_BUDGET:
        raise MnistCnnError(f"{path}: a search file of {path.stat().st_size:,} bytes; expected at most "
                            f"{SEARCH_FILE_BUDGET:,}")
    raw = read_document(path, "search")
    if isinstance(raw, dict) and isinstance(raw.get("base"), dict):
        raw["base"] = {k: _beside(path, v) if k in ("model", "data") else v for k, v in raw["base"].items()}
    return check_search(raw, str(path), default_name=path.stem)


def check_search(raw: Any, source: str = "search", default_name: str = "search") -> dict[str, Any]:
    """Validate a search given as plain data; every error names the source and the key."""
    if not isinstance(raw, dict):
        raise MnistCnnError(f"{source}: a search must be a table with 'base' and 'search', got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SEARCH_KEYS))
    if unknown:
        raise MnistCnnError(f"{source}: unknown top-level key {unknown[0]!r}; expected {', '.join(SEARCH_KEYS)}")
    base, space = raw.get("base", {}), raw.get("search")
    if not isinstance(base, dict):
        raise MnistCnnError(f"{source}: 'base' must be a table of training options, got {base!r}")
    if not isinstance(space, dict) or not space:
        raise MnistCnnError(f"{source}: 'search' must be a table of option = {{low, high}} or {{choices}}, "
                            f"got {space!r}")
    objective = raw.get("objective", "val_accuracy")
    if objective not in OBJECTIVES:
        raise MnistCnnError(f"{source}: objective must be val_accuracy or val_loss (the validation split), "
                            f"got {objective!r}")
    search = {"name": str(raw.get("name") or default_name), "description": str(raw.get("description", "")),
              "objective": objective, "trials": _count(raw.get("trials", 20), f"{source}: trials"),
              "timeout": _seconds(raw.get("timeout"), f"{source}: timeout"),
              "seeds": _count(raw.get("seeds", 1), f"{source}: seeds"), "prune": _prune(raw.get("prune", True), source),
              "base": base, "search": {name: _param(name, spec, source) for name, spec in _flatten(space).items()}}
    _check_configs(search, source)
    return search


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MnistCnnError(f"{what} must be a positive integer, got {value!r}")
    return value


def _seconds(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
        raise MnistCnnError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def _prune(value: Any, source: str) -> dict[str, int] | None:
    """None (never prune), or the MedianPruner's startup trials and warm-up epochs."""
    if value is False:
        return None
    settings = {"startup_trials": 5, "warmup_epochs": 0}
    if value is not True:
        if not isinstance(value, dict) or set(value) - set(settings):
            raise MnistCnnError(f"{source}: prune must be true, false or {{startup_trials = N, warmup_epochs = N}}, "
                                f"got {value!r}")
        settings.update(value)
    for key, n in settings.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise MnistCnnError(f"{source}: prune.{key} must be a whole number >= 0, got {n!r}")
    return settings


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted name: range or choices}; a table whose keys are all low/high/log/step/choices is one option's."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and value and not set(value) <= SPEC_KEYS:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _param(name: str, spec: Any, source: str) -> dict[str, Any]:
    """One option's space: {'choices': [...]} or {'low', 'high', 'log', 'step', 'int'}."""
    where = f"{source}: search {name!r}"
    if name.split(".")[0] in FIXED:
        raise MnistCnnError(f"{where}: {name.split('.')[0]} is fixed for a study (where runs go, the seeds of a trial, "
                            "the data and its validation split); set it in [base]")
    if not isinstance(spec, dict) or not spec:
        raise MnistCnnError(f"{where} must be {{low, high}}, {{low, high, log = true}} or {{choices = [...]}}, "
                            f"got {spec!r}")
    if "choices" in spec:
        choices = spec["choices"]
        plain = isinstance(choices, list) and choices and all(isinstance(c, (bool, int, float, str)) for c in choices)
        if set(spec) != {"choices"} or not plain:
            raise MnistCnnError(f"{where}: choices must be a non-empty list of numbers, strings or booleans, on its "
                                f"own, got {spec!r}")
        return {"choices": list(choices)}
    low: Any = spec.get("low")
    high: Any = spec.get("high")
    log, step = spec.get("log", False), spec.get("step")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
    if not numbers or not low < high:
        raise MnistCnnError(f"{where} needs numbers low < high, got low={low!r} high={high!r}")
    if not isinstance(log, bool) or (log and low <= 0):
        raise MnistCnnError(f"{where}: log = true needs low > 0 (log is true or false), got log={log!r} low={low!r}")
    if step is not None and (log or not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0):
        raise MnistCnnError(f"{where}: step must be a positive number, and cannot go with log, got {step!r}")
    whole = all(isinstance(v, int) for v in (low, high)) and (step is None or isinstance(step, int))
    return {"low": low, "high": high, "log": log, "step": step, "int": whole}


def _check_configs(search: dict[str, Any], source: str) -> None:
    """Every end of every range, and every choice, must make a valid config: fail before hours of training."""
    config = make_cell_config(search, {}, seed=0, source=source)
    if not (config.val_size or config.validation_split):
        raise MnistCnnError(f"{source}: the objective is scored on the validation split: set val_size or "
                            "validation_split in [base]")
    for name, space in search["search"].items():
        for value in space.get("choices", (space.get("low"), space.get("high"))):
            make_cell_config(search, {name: value}, seed=0, source=source)


def _suggest(trial: Any, name: str, space: dict[str, Any]) -> Any:
    if "choices" in space:
        return trial.suggest_categorical(name, space["choices"])
    if space["int"]:
        return trial.suggest_int(name, space["low"], space["high"], step=space["step"] or 1, log=space["log"])
    return trial.suggest_float(name, float(space["low"]), float(space["high"]), step=space["step"], log=space["log"])


@dataclass
class TuneResult:
    """A study's state after this worker's trials: every trial of every worker, and the best one."""

    name: str
    out: Path
    storage: str                      # the URL, without its password
    objective: str
    best: dict[str, Any] | None       # trial, value, params, run_dirs of the best finished trial
    recipe: Path | None               # best_recipe.json: `mnist-cnn train --recipe FILE` trains it again
    trials: list[dict[str, Any]]      # one row per trial: number, state, value, params, seconds, worker, ...
    importances: dict[str, float] | None
    plot: Path | None
    seconds: float                    # this worker's wall time
    table: str

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items() if k != "table"}


class _TrialFailed(Exception):
    """A trial whose sampled settings could not train (the study goes on; the trial counts against the budget)."""


def tune(search: dict[str, Any] | str | os.PathLike, *, storage: str | None = None, trials: int | None = None,
         timeout: float | None = None, seeds: int | None = None, out: str | os.PathLike | None = None,
         data: MnistData | None = None, log: Callable[[str], None] = print,
         heartbeat: int = HEARTBEAT_SECONDS) -> TuneResult:
    """Run trials of the search's study until its budget of `trials` is spent (by all its workers together) or
    `timeout` seconds have passed here; write the best trial's recipe, the table and the plot under `out`.

    `storage`: an SQLAlchemy URL (default sqlite:///OUT/study.db); the same command with the same storage in more
    processes, on more machines, runs more trials at once. `heartbeat`: seconds between a worker's signs of life."""
    search = check_search(search) if isinstance(search, dict) else load_search(search)
    trials = search["trials"] if trials is None else _count(trials, "trials")
    timeout = search["timeout"] if timeout is None else _seconds(timeout, "timeout")
    search["seeds"] = search["seeds"] if seeds is None else _count(seeds, "seeds")
    out = make_dir(out or Path("studies") / re.sub(r"[^A-Za-z0-9_.-]+", "-", search["name"]), "study folder")
    url = storage or sqlite_url(out)
    data = data if data is not None else load_mnist(make_cell_config(search, {}, seed=0).data)
    optuna = optuna_module()
    pruner = (optuna.pruners.NopPruner() if search["prune"] is None else optuna.pruners.MedianPruner(
        n_startup_trials=search["prune"]["startup_trials"], n_warmup_steps=search["prune"]["warmup_epochs"]))
    study = open_study(url, search["name"], direction=OBJECTIVES[search["objective"]], sampler=optuna.samplers.
                       TPESampler(), pruner=pruner, heartbeat=heartbeat)
    claim_record(study, "search", {k: search[k] for k in ("objective", "seeds", "base", "search")}, "search")
    record = data_record(data)  # the same images, wherever each worker keeps them
    claim_record(study, "data", {k: v for k, v in record.items() if k != "source"}, "data set")
    if "data_source" not in study.user_attrs:
        study.set_user_attr("data_source", record["source"])
    if "code" not in study.user_attrs:
        study.set_user_attr("code", code_record())
    started = time.perf_counter()
    log(f"study {search['name']!r} in {public_url(url)}: {_spent(study)} of {trials} trials done")

    def objective(trial: Any) -> float:
        return _run_trial(trial, search, out, data, log)

    def stop_when_spent(study: Any, _trial: Any) -> None:
        if _spent(study) >= trials:
            study.stop()

    with quiet_optuna():
        if _spent(study) < trials:
            study.optimize(objective, timeout=timeout, callbacks=[stop_when_spent], catch=(_TrialFailed,))
    return _summarise(study, search, out, public_url(url), time.perf_counter() - started)


def _spent(study: Any) -> int:
    """Trials that count against the budget: finished, pruned, or failed on their own settings; a trial whose
    worker was killed does not count (it is retried)."""
    return len(trials_in(study, "COMPLETE", "PRUNED")) + sum("error" in t.user_attrs for t in trials_in(study, "FAIL"))


def _run_trial(trial: Any, search: dict[str, Any], out: Path, data: MnistData, log: Callable[[str], None]) -> float:
    """Train the trial's seeds one after the other; its score is the mean of their validation scores."""
    from .training import train

    optuna = optuna_module()
    params = {name: _suggest(trial, name, space) for name, space in search["search"].items()}
    folder = out / "trials" / f"trial-{trial.number:04d}"
    first = trial.user_attrs.get("first_try", trial.number)  # a retry carries the user attributes of the dead trial
    log(f"trial {trial.number}: {cell_label(params)}" + (f" (again: trial {first}'s worker died)"
                                                          if first != trial.number else ""))
    trial.set_user_attr("first_try", first)
    trial.set_user_attr("worker", worker_name())
    trial.set_user_attr("code", code_record())
    scores: list[float] = []
    try:
        configs = [make_cell_config(search, params, s, str(folder / f"seed-{s}"), source=f"trial {trial.number}")
                   for s in range(search["seeds"])]
        trial.set_user_attr("configs", [c.to_dict() for c in configs])
        trial.set_user_attr("run_dirs", [c.out for c in configs])
        for s, config in enumerate(configs):
            run = train(config, data, overwrite=True, log=log,
                        on_epoch=_pruning(trial, search["objective"]) if s == 0 else None)
            scores.append(tested_row(run.history, run.config)[search["objective"]])
            trial.set_user_attr("scores", scores)
    except optuna.TrialPruned:
        log(f"trial {trial.number}: pruned")
        raise
    except TrainingInterrupted as e:
        raise TrainingInterrupted(f"interrupted in trial {trial.number}, which is marked failed and does not count: "
                                  "run the same command again to go on", e.signum, e.run_dir) from None
    except MnistCnnError as e:  # the sampled settings cannot train: say so, and go on with the next trial
        trial.set_user_attr("error", str(e))
        log(f"trial {trial.number}: failed: {e}")
        raise _TrialFailed(str(e)) from None
    value = sum(scores) / len(scores)
    log(f"trial {trial.number}: {search['objective']} {value:.4f}")
    return value


def _pruning(trial: Any, objective: str) -> Callable[[dict[str, Any]], None]:
    """train()'s on_epoch hook: report the epoch's validation score, and stop a trial the pruner finds poor."""
    optuna = optuna_module()

    def on_epoch(row: dict[str, Any]) -> None:
        trial.report(row[objective], step=row["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"{objective} {row[objective]:.4f} at epoch {row['epoch']}")

    return on_epoch


def best_recipe(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config as a recipe: every training option but where the run goes and where it runs."""
    from .training.config import PLACEMENT

    return {k: v for k, v in config.items() if k not in ("out", "recipe", "verbose", *PLACEMENT)}


def _summarise(study: Any, search: dict[str, Any], out: Path, url: str, seconds: float) -> TuneResult:
    rows = [_row(t) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    best = recipe = None
    if trials_in(study, "COMPLETE"):
        t = study.best_trial
        best = {"trial": t.number, "value": t.value, "params": t.params, "run_dirs": t.user_attrs.get("run_dirs")}
        recipe = atomic_write_json(out / "best_recipe.json", best_recipe(t.user_attrs["configs"][0]))
    result = TuneResult(search["name"], out, url, search["objective"], best, recipe, rows, _importances(study), None,
                        seconds, "")
    result.table = format_trials(result)
    atomic_write_json(out / "trials.json", {**result.to_dict(), "study": study.user_attrs})
    try:
        result.plot = plot_trials(result, out / "trials.png")
    except ImportError:  # matplotlib is an optional extra
        pass
    return result


def _row(t: Any) -> dict[str, Any]:
    seconds = t.duration.total_seconds() if t.duration is not None else None
    return {"trial": t.number, "state": t.state.name, "value": t.value, "params": t.params, "seconds": seconds,
            "last_epoch": max(t.intermediate_values, default=None), "worker": t.user_attrs.get("worker"),
            "retry_of": t.user_attrs.get("first_try") if t.user_attrs.get("first_try", t.number) != t.number
            else None, "error": t.user_attrs.get("error"),
            "run_dirs": t.user_attrs.get("run_dirs")}


def _importances(study: Any) -> dict[str, float] | None:
    """Optuna's parameter importances (fANOVA), where there are enough finished trials to compute them."""
    optuna = optuna_module()
    if len(trials_in(study, "COMPLETE")) < 2:
        return None
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError, ImportError):  # e.g. every trial had the same settings
        return None


__all__ = ["TuneResult", "best_recipe", "check_search", "load_search", "tune"]
