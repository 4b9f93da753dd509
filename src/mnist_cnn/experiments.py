"""Experiments: a grid of training variants, each over several seeds, summarised as mean and std per cell.

A grid file (TOML, or JSON with the same shape) holds the options every run shares and the axes to vary:

    name = "keras-dropout ablation"
    seeds = 3                       # default; --seeds overrides
    [base]                          # any TrainConfig field (model, recipe, epochs, augment, ...)
    model = "keras-dropout"
    [axes]                          # every combination of these values is one cell
    model_options.kernel_size = [3, 5]
    model_options.dropout = [true, false]

Dotted names reach into tables (model_options.kernel_size, augment.rotation). Every run is a normal run
directory under OUT/runs/CELL/seed-S, and a finished run with the same config is reused, not trained again,
so an interrupted grid continues where it stopped. Selection between cells belongs on the validation columns;
the test columns are reported once per finished run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import time
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_write_json, make_dir
from .budgets import Budget
from .data import MnistData, load_mnist
from .display import Text, axes, finish, html_table
from .documents import read_document
from .errors import MnistCnnError, TrainingInterrupted
from .training.optim import improved

#: cells of one grid (each trains `seeds` runs): 9 axes of 10 values would be 10^9 of them
GRID_CELLS = Budget("MNIST_CNN_MAX_GRID_CELLS", 10_000, "cells")

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def load_grid(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a grid file: {'name', 'seeds', 'base': {...}, 'axes': {dotted name: [values]}}."""
    path = Path(path)
    raw = read_document(path, "grid", (".toml", ".json"))
    if isinstance(raw, dict):  # spec and data files named in the grid are found beside it, as it was written
        for table in (raw.get("base"), raw.get("axes")):
            for key in ("model", "data"):
                if isinstance(table, dict) and key in table:
                    table[key] = ([_beside(path, v) for v in table[key]] if isinstance(table[key], list)
                                  else _beside(path, table[key]))
    return check_grid(raw, str(path), default_name=path.stem)


def _beside(grid_file: Path, value: Any) -> Any:
    """A relative path that exists next to the grid file, as a path from here; anything else as it is."""
    if isinstance(value, str) and value and not Path(value).is_absolute() and (grid_file.parent / value).exists():
        return str(grid_file.parent / value)
    return value


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def check_grid(raw: Any, source: str = "grid", default_name: str = "experiment") -> dict[str, Any]:
    """Validate a grid given as plain data; every error names the grid and the key."""
    if not isinstance(raw, dict):
        raise MnistCnnError(f"{source}: a grid must be a table with 'base' and 'axes', got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"name", "seeds", "base", "axes", "description"})
    if unknown:
        raise MnistCnnError(f"{source}: unknown top-level key {unknown[0]!r}; expected name, description, seeds, "
                            f"base, axes")
    base, axes = raw.get("base", {}), raw.get("axes", {})
    if not isinstance(base, dict):
        raise MnistCnnError(f"{source}: 'base' must be a table of training options, got {base!r}")
    if not isinstance(axes, dict):
        raise MnistCnnError(f"{source}: 'axes' must be a table of option = [values], got {axes!r}")
    flat_axes = {name: list(v) if isinstance(v, tuple) else v for name, v in _flatten(axes).items()}
    for name, values in flat_axes.items():
        if not isinstance(values, list) or not values:
            raise MnistCnnError(f"{source}: axis {name!r} must be a non-empty list of values, got {values!r}")
    seeds = raw.get("seeds", 3)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise MnistCnnError(f"{source}: 'seeds' must be a positive integer, got {seeds!r}")
    GRID_CELLS.check(math.prod(len(values) for values in flat_axes.values()), f"{source}: the grid's cells (the "
                     f"product of its {len(flat_axes)} axes' lengths)")  # counted before one is built
    grid = {"name": str(raw.get("name") or default_name), "description": str(raw.get("description", "")),
            "seeds": seeds, "base": base, "axes": flat_axes}
    for cell in cells(grid):  # every cell must make a valid config: fail before hours of training, not during
        make_cell_config(grid, cell, seed=0, source=source)
    return grid


def _set(options: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = options
    for part in parents:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[leaf] = value


def cells(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of axis values, in file order: [{dotted name: value}, ...] (one empty cell if no axes)."""
    names = list(grid["axes"])
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid["axes"][n] for n in names))]


def _value_text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def cell_label(cell: dict[str, Any]) -> str:
    """'kernel_size=3 dropout=true': the last part of each dotted name, for tables and plots."""
    return " ".join(f"{name.rsplit('.', 1)[-1]}={_value_text(v)}" for name, v in cell.items()) or "base"


def cell_slug(cell: dict[str, Any]) -> str:
    slug = "_".join(f"{name.rsplit('.', 1)[-1]}-{_value_text(v)}" for name, v in cell.items()) or "base"
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", slug)[:120]


def cell_folders(grid_cells: list[dict[str, Any]]) -> list[str]:
    """Each cell's folder name: its slug, plus a hash of its values where two slugs would be the same
    ('s a.toml' and 's-a.toml'), so that no cell trains over another's runs."""
    slugs = [cell_slug(cell) for cell in grid_cells]
    return [slug if slugs.count(slug) == 1 else
            f"{slug}-{hashlib.sha256(json.dumps(cell, sort_keys=True).encode()).hexdigest()[:8]}"
            for slug, cell in zip(slugs, grid_cells)]


def make_cell_config(grid: dict[str, Any], cell: dict[str, Any], seed: int, out: str | None = None,
                     overrides: dict[str, Any] | None = None, source: str = "grid"):
    """The TrainConfig of one run: base, then the cell's values, then `overrides` (e.g. epochs from the CLI)."""
    from .training import make_config
    from .zoo import get_spec

    options = json.loads(json.dumps(grid["base"]))  # a deep copy
    for name, value in cell.items():
        _set(options, name, value)
    options.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        base_seed = options.pop("seed", 0)
        if not isinstance(base_seed, int) or isinstance(base_seed, bool):
            raise MnistCnnError(f"seed must be an integer, got {base_seed!r}")
        options.update(seed=base_seed + seed, out=out, verbose=options.get("verbose", 0))
        config = make_config(**options)
        get_spec(config.model, **config.model_options)  # model options are checked when the spec is built
        return config
    except (MnistCnnError, TypeError) as e:
        raise MnistCnnError(f"{source}: cell {cell_label(cell)}: {e}") from None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def tested_row(history: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """The history row of the weights that were tested: with restore_best, the first best epoch on `monitor`
    (the one training kept), else the last."""
    monitor = config.get("monitor", "val_loss")
    rows = [row for row in history if row.get(monitor) is not None]
    if not (config.get("restore_best") and rows):
        return history[-1] if history else {}
    best = kept = None
    for row in rows:  # training's own rule, min_delta and float32 comparison included
        if improved(row[monitor], best, monitor, config.get("min_delta", 0.0)):
            best, kept = row[monitor], row
    return kept or {}


def run_grid(grid: dict[str, Any], *, seeds: int | None = None, out: str | os.PathLike | None = None,
             data: MnistData | None = None, overrides: dict[str, Any] | None = None,
             log: Callable[[str], None] = print, storage: str | None = None) -> GridResults:
    """Train every cell x seed, write OUT/results.json (+ results.png when matplotlib is there); return it.

    Each cell is a trial of an Optuna study over the grid (queued in file order, a grid sampler behind the queue).
    In memory by default; with `storage` (an Optuna storage URL) the same call in more processes, on more
    machines, shares the cells: each worker takes cells nobody has taken, and the last to finish writes the full
    results."""
    from .studies import open_study, optuna_module, quiet_optuna, trials_in

    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
        raise MnistCnnError(f"seeds must be a positive integer, got {seeds!r}")
    seeds = seeds or grid["seeds"]
    out = make_dir(out or Path("experiments") / re.sub(r"[^A-Za-z0-9_.-]+", "-", grid["name"]))
    if data is not None and "data" in grid["axes"]:
        raise MnistCnnError("the grid varies 'data' across cells, so run_grid cannot also be given one data set")
    for name, value in (overrides or {}).items():  # one value for every cell would flatten the axis silently
        if value is not None and name in grid["axes"]:
            raise MnistCnnError(f"--{name.replace('_', '-')} {value} would replace the grid's axis {name!r} "
                                f"({grid['axes'][name]}) in every cell: drop one of them")
    grid_cells = cells(grid)
    results: dict[str, Any] = {"name": grid["name"], "description": grid["description"], "out": str(out),
                               "seeds": seeds, "base": grid["base"], "axes": grid["axes"],
                               "overrides": {k: v for k, v in (overrides or {}).items() if v is not None},
                               "cells": []}
    # one study per grid and settings: a changed grid file starts a new one, and its runs are reused where they match
    key = json.dumps({k: results[k] for k in ("seeds", "base", "axes", "overrides")}, sort_keys=True, default=str)
    optuna = optuna_module()
    study = open_study(storage, f"{grid['name']}-{hashlib.sha256(key.encode()).hexdigest()[:10]}",
                       direction="maximize", sampler=optuna.samplers.GridSampler({"cell": list(range(len(grid_cells)))},
                                                                                 seed=0))
    run_cell = _cell_runner(grid, grid_cells, seeds, out, data, overrides, log)

    def finished() -> dict[int, Any]:
        return {t.params["cell"]: t.user_attrs["row"] for t in trials_in(study, "COMPLETE")}

    def objective(trial: Any) -> float:
        i = trial.suggest_categorical("cell", list(range(len(grid_cells))))
        if any(t.params.get("cell") == i for t in trials_in(study, "RUNNING", "COMPLETE") if t.number != trial.number):
            raise optuna.TrialPruned()  # another worker took this cell a moment ago: leave it to them
        row = run_cell(i)
        trial.set_user_attr("row", row)
        rows = {**finished(), i: row}
        results["cells"] = [rows[i] for i in sorted(rows)]
        atomic_write_json(out / "results.json", results)  # after every cell: partial results survive
        return row["val_accuracy_mean"] or 0.0  # the grid's cells are compared in the results, not by Optuna

    def all_taken() -> bool:
        return {t.params.get("cell") for t in trials_in(study, "RUNNING", "COMPLETE")} >= set(range(len(grid_cells)))

    def stop_when_all_taken(*_: Any) -> None:  # each worker stops once no cell is left for it
        if all_taken():
            study.stop()

    started = time.perf_counter()
    with quiet_optuna():
        if not all_taken():
            # the cells nobody holds join the study's queue in file order; workers pop each queued trial once
            held = {_cell_of(t) for t in trials_in(study, "WAITING", "RUNNING", "COMPLETE")}
            for i in range(len(grid_cells)):
                if i not in held:
                    study.enqueue_trial({"cell": i})
            study.optimize(objective, callbacks=[stop_when_all_taken])
    rows = finished()
    results["cells"] = [rows[i] for i in sorted(rows)]
    results["seconds"] = time.perf_counter() - started
    if len(rows) < len(grid_cells):
        log(f"{len(grid_cells) - len(rows)} cell(s) still training in other workers: the last to finish writes the "
            "full results")
    atomic_write_json(out / "results.json", results)
    results["table"] = format_table(results)
    if importlib.util.find_spec("matplotlib") is None:
        log("matplotlib is not installed: no plot (pip install 'mnist-cnn[plot]')")
    else:
        plot_results(results, out / "results.png")
        results["plot"] = str(out / "results.png")
    return GridResults(results)


def _cell_of(trial: Any) -> int | None:
    """The grid cell of a trial, also of one still waiting in the queue (its value is fixed, not yet suggested)."""
    return trial.params.get("cell", trial.system_attrs.get("fixed_params", {}).get("cell"))


def _cell_runner(grid: dict[str, Any], grid_cells: list[dict[str, Any]], seeds: int, out: Path,
                 data: MnistData | None, overrides: dict[str, Any] | None,
                 log: Callable[[str], None]) -> Callable[[int], dict[str, Any]]:
    """A function that trains (or reuses) cell i's seeds and returns its row of the results."""
    from .reuse import reuse_or_train

    loaded: dict[str | None, MnistData] = {}  # each data set once, however many cells use it
    folders = cell_folders(grid_cells)

    def run_cell(i: int) -> dict[str, Any]:
        cell, runs = grid_cells[i], []
        for s in range(seeds):
            config = make_cell_config(grid, cell, s, str(out / "runs" / folders[i] / f"seed-{s}"), overrides)
            log(f"[{i + 1}/{len(grid_cells)}] {cell_label(cell)} seed {config.seed}")
            try:
                if data is None and config.data not in loaded:
                    loaded[config.data] = load_mnist(config.data)
                run = reuse_or_train(config, data=loaded[config.data] if data is None else data, log=log)
            except TrainingInterrupted:
                raise
            except MnistCnnError as e:  # found only now that the data is there: say which cell
                raise MnistCnnError(f"{grid['name']}: cell {cell_label(cell)}, seed {config.seed}: {e}") from None
            tested = tested_row(run.history, run.config)  # the validation numbers of the model that was tested
            runs.append({"seed": config.seed, "run_dir": str(run.path), "test_accuracy": run.metrics.get("accuracy"),
                         "test_loss": run.metrics.get("loss"), "val_accuracy": tested.get("val_accuracy"),
                         "val_loss": tested.get("val_loss"), "epochs": len(run.history),
                         "train_seconds": run.metrics.get("train_seconds")})
            log(f"    test accuracy {runs[-1]['test_accuracy'] * 100:.2f}%"
                + (f", val accuracy {runs[-1]['val_accuracy'] * 100:.2f}%" if runs[-1]["val_accuracy"] else ""))
        row: dict[str, Any] = {"label": cell_label(cell), "options": cell, "runs": runs}
        for key in ("test_accuracy", "val_accuracy", "train_seconds"):
            values = [r[key] for r in runs if r[key] is not None]
            row[key + "_mean"], row[key + "_std"] = mean_std(values) if values else (None, None)
        return row

    return run_cell


class GridResults(dict):
    """run_grid's answer: the dict results.json holds, plus its table, which is how it prints and shows."""

    def __repr__(self) -> str:
        return str(format_table(self))

    def _repr_html_(self) -> str:
        return format_table(self)._repr_html_()


def _pct(mean: float | None, std: float | None) -> str:
    return "-" if mean is None or std is None else f"{mean * 100:.2f} ± {std * 100:.2f}"


def format_table(results: dict[str, Any]) -> Text:
    """One line per cell: test and validation accuracy (mean ± sample std over seeds), seconds per run; in a
    notebook, an HTML table."""
    rows = [(c["label"], _pct(c["test_accuracy_mean"], c["test_accuracy_std"]),
             _pct(c["val_accuracy_mean"], c["val_accuracy_std"]),
             "-" if c["train_seconds_mean"] is None else f"{c['train_seconds_mean']:.1f}", str(len(c["runs"])))
            for c in results["cells"]]
    head = ("cell", "test acc % (mean ± std)", "val acc % (mean ± std)", "s/run", "seeds")
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))

    seeds = f"{results['seeds']} seed{'s' if results['seeds'] != 1 else ''} each"
    title = f"{results['name']} ({seeds})"
    return Text("\n".join([title, line(head), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]),
                f"<p>{escape(title)}</p>" + html_table(head, rows, numeric=(1, 2, 3, 4)))


def plot_results(results: dict[str, Any], path: str | os.PathLike | None = None, *, ax: Axes | None = None) -> Figure:
    """A bar chart of test (and validation) accuracy per cell with one-std error bars; written to `path` if given."""
    cells_ = results["cells"]
    labels = [c["label"].replace(" ", "\n") for c in cells_]
    fig, ax = axes(ax, max(5.5, 1.6 * len(cells_) + 2.5), 4)  # room for the legend on the right
    xs = list(range(len(cells_)))
    series = [("test", "test_accuracy", -0.2)]
    if any(c["val_accuracy_mean"] is not None for c in cells_):
        series.append(("validation", "val_accuracy", 0.2))
    for name, key, offset in series:
        means = [(c[key + "_mean"] or math.nan) * 100 for c in cells_]
        stds = [(c[key + "_std"] or 0) * 100 for c in cells_]
        ax.bar([x + offset for x in xs], means, width=0.4, yerr=stds, capsize=4, label=name)
    # the axis holds every bar's mean +- std, so no error bar runs off the plot
    spans = [(c[k + "_mean"] * 100, (c[k + "_std"] or 0) * 100) for c in cells_ for _, k, _ in series
             if c[k + "_mean"] is not None]
    if spans:
        ax.set_ylim(max(0.0, min(m - s for m, s in spans) - 1.0), min(100.0, max(m + s for m, s in spans) + 0.5))
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("accuracy % (mean ± std)")
    ax.set_title(f"{results['name']} ({results['seeds']} seeds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    return finish(fig, path)


def summary_json(results: dict[str, Any]) -> dict[str, Any]:
    """The results without the rendered table: what `--json` prints."""
    return {k: v for k, v in results.items() if k != "table"}


__all__ = ["GridResults", "cell_folders", "cell_label", "cells", "check_grid", "format_table", "load_grid",
           "make_cell_config", "mean_std", "plot_results", "run_grid", "summary_json", "tested_row"]
