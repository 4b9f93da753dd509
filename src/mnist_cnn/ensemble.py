"""Ensembles: average the softmax outputs of several trained models, optionally over shifted copies (TTA).

    from mnist_cnn.ensemble import ensemble_runs, save_ensemble, load_ensemble, train_members
    model = ensemble_runs(["runs/a", "runs/b"], tta=True)    # an nn.Module like any SpecModel
    save_ensemble("runs/ens", model)                          # ONE file: runs/ens/ensemble.safetensors
    ens = load_ensemble("runs/ens")                           # .model, .predict_proba, .metrics, ...

The file is a safetensors file written by `runs.save_tensors` (checksummed): member i's weights live under
the prefix `members.{i}.`, and the metadata holds every member's spec, the TTA shifts and where each
member came from, so the ensemble loads from that file alone.

`EnsembleModel.forward` returns the log of the averaged probabilities. Used as "logits" (by `evaluate`,
`predict_logits`, the loss) this is exact: softmax(log p) = p when p sums to 1, and argmax is unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_write_json
from .budgets import describe, exists, is_dir
from .data import MnistData, load_mnist, recorded_path, split_validation
from .errors import MnistCnnError
from .evaluation import evaluate, metrics_from_logits, predict_logits
from .inputs import as_model_input
from .models import SpecModel, build_model, count_params
from .reuse import reuse_or_train
from .rundir import check_out, claim
from .runs import (
    ENSEMBLE_FILE,
    Run,
    check_declared,
    checked_config,
    fill_weights,
    load_run,
    load_tensors,
    read_classes,
    read_json,
    save_tensors,
    write_classes,
)
from .spec import parse_spec

# (dx, dy) in pixels: the image itself and one-pixel shifts in the four directions
DEFAULT_SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def shift_images(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """x [N,C,H,W] moved dx pixels right and dy pixels down, with 0 (the MNIST background) coming in."""
    if dx == 0 and dy == 0:
        return x
    h, w = x.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        raise MnistCnnError(f"TTA shift ({dx}, {dy}) is larger than the {h}x{w} image")
    padded = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top:top + h, left:left + w].contiguous()  # a strided view is slow for the convs


def log_probabilities(p: torch.Tensor) -> torch.Tensor:
    """log p with zeros clamped to the smallest float32: finite "logits" for the loss and the metrics."""
    return torch.log(p.clamp_min(torch.finfo(torch.float32).tiny))


def _check_shifts(shifts: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    out = []
    for s in shifts:
        if (not isinstance(s, (list, tuple)) or len(s) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in s)):
            raise MnistCnnError(f"TTA shifts must be pairs of integers (dx, dy), got {s!r}")
        out.append((int(s[0]), int(s[1])))
    if not out:
        raise MnistCnnError("TTA needs at least one shift, e.g. (0, 0)")
    return tuple(out)


class EnsembleModel(nn.Module):
    """The mean of its members' softmax outputs (each member averaged over `shifts` first when given).

    Input: float [N,1,28,28] in [0,1], like a SpecModel. `forward` gives log(mean probability), which every
    consumer of logits (loss, argmax, softmax) treats exactly as the averaged prediction.
    """

    def __init__(self, members: Sequence[SpecModel], shifts: Sequence[Sequence[int]] | None = None,
                 sources: Sequence[str] | None = None):
        super().__init__()
        if not members:
            raise MnistCnnError("an ensemble needs at least one member")
        classes = {m.spec.num_classes for m in members}
        if len(classes) != 1:
            raise MnistCnnError(f"ensemble members disagree on the number of classes: {sorted(classes)}")
        self.members = nn.ModuleList(members)
        self.shifts = _check_shifts(shifts) if shifts else ((0, 0),)
        self.sources = [str(s) for s in sources] if sources else [""] * len(members)
        self.memory_format = getattr(members[0], "memory_format", torch.contiguous_format)

    @property
    def models(self) -> list[SpecModel]:
        """The members, typed as what they are (ModuleList holds plain modules)."""
        return typing.cast(list[SpecModel], list(self.members))

    @property
    def tta(self) -> bool:
        return self.shifts != ((0, 0),)

    @property
    def num_classes(self) -> int:
        return self.models[0].spec.num_classes

    @property
    def name(self) -> str:
        names = sorted({m.spec.name for m in self.models})
        return f"ensemble-{len(self.members)}x{'+'.join(names)}" + ("-tta" if self.tta else "")

    def with_shifts(self, shifts: Sequence[Sequence[int]] | None) -> EnsembleModel:
        """The same members (shared, not copied) with other TTA shifts."""
        return EnsembleModel(self.models, shifts, self.sources)

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """[M, N, classes]: each member's probabilities, averaged over the TTA shifts."""
        out = []
        for member in self.members:
            p = typing.cast(torch.Tensor, sum(torch.softmax(member(shift_images(x, dx, dy)).float(), dim=1)
                                              for dx, dy in self.shifts))
            out.append(p / len(self.shifts) if len(self.shifts) > 1 else p)
        return torch.stack(out)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return self.member_probabilities(x).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return log_probabilities(self.probabilities(x))

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self.models[0].input_size

    @torch.no_grad()
    def predict_proba(self, x: Any) -> torch.Tensor:
        """Like SpecModel.predict_proba: images in any form `inputs.as_model_input` accepts."""
        return self.probabilities(as_model_input(x, size=self.input_size))

    def describe(self) -> dict[str, Any]:
        return {"members": [{"spec": m.spec.to_dict(), "source": s} for m, s in zip(self.models, self.sources)],
                "shifts": [list(s) for s in self.shifts], "combine": "mean of softmax"}


def ensemble_of(models: Sequence[SpecModel], tta: bool | Sequence[Sequence[int]] = False,
                sources: Sequence[str] | None = None) -> EnsembleModel:
    """An ensemble of models already in memory; tta=True uses DEFAULT_SHIFTS."""
    shifts = DEFAULT_SHIFTS if tta is True else (tta or None)
    return EnsembleModel(list(models), shifts, sources).eval()


def ensemble_runs(run_dirs: Sequence[str | os.PathLike], tta: bool | Sequence[Sequence[int]] = False) -> EnsembleModel:
    """An ensemble of run directories (or model.safetensors files)."""
    runs = [load_run(d) for d in run_dirs]
    _check_members(runs)
    return ensemble_of([r.model for r in runs], tta, _sources(runs))


def _check_members(runs: Sequence[Run]) -> None:
    if not runs:
        raise MnistCnnError("an ensemble needs at least one run")
    paths = [r.source.resolve() for r in runs]
    twice = next((r.source for r, p in zip(runs, paths) if paths.count(p) > 1), None)
    if twice is not None:  # it would count double in the average
        raise MnistCnnError(f"{twice} is given twice: an ensemble's members are different runs")


def _sources(runs: Sequence[Run]) -> list[str]:
    """Where the members came from, absolute: the ensemble is opened later from other folders."""
    return [str(r.source.absolute()) for r in runs]


def save_ensemble(path: str | os.PathLike, model: EnsembleModel, extra: dict[str, Any] | None = None) -> Path:
    """Write the ensemble as one checksummed safetensors file (a directory gets ENSEMBLE_FILE inside)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / ENSEMBLE_FILE
    # clone: the same model may appear twice, and safetensors refuses tensors that share memory
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return save_tensors(path, tensors, {"ensemble": model.describe(), **(extra or {})})


def load_ensemble_model(path: str | os.PathLike) -> EnsembleModel:
    """Rebuild an EnsembleModel from its file (or the directory holding ENSEMBLE_FILE)."""
    path = Path(path)
    file = path / ENSEMBLE_FILE if is_dir(path) else path
    if not exists(file):
        raise MnistCnnError(f"{path} is not an ensemble: {file.name} not found (make one with "
                            f"`mnist-cnn ensemble RUN_DIR... --out {path}`)")
    tensors, meta = load_tensors(file)
    desc = meta.get("ensemble")
    if not isinstance(desc, dict) or not isinstance(desc.get("members"), list) or not desc["members"]:
        raise MnistCnnError(f"{file} holds no ensemble description in its metadata (is it a single model? "
                            f"open it with load_run)")
    specs = [parse_spec(_member_spec(m, file, i), f"{file} member {i}") for i, m in enumerate(desc["members"])]
    check_declared(specs, tensors, file)
    members = [build_model(spec) for spec in specs]
    model = EnsembleModel(members, desc.get("shifts"), [m.get("source", "") for m in desc["members"]])
    return fill_weights(model, tensors, f"{file}: weights do not fit the member specs")


def _member_spec(member: Any, file: Path, i: int) -> Any:
    if not isinstance(member, dict) or "spec" not in member:
        raise MnistCnnError(f"{file}: ensemble member {i} in its metadata has no spec (the file was edited or damaged)")
    return member["spec"]


@dataclass
class EnsembleRun:
    """An ensemble on disk, shaped like runs.Run: .model, .path, .metrics, .config, .predict_proba."""

    path: Path
    model: EnsembleModel
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    file: Path | None = None  # the ensemble file, when it was opened by its path rather than its directory

    @property
    def source(self) -> Path:
        """What the ensemble was opened from: its directory, or the file."""
        return self.file or self.path
    classes: tuple[str, ...] | None = None  # its members' class names; None: the digits 0..9

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def num_params(self) -> int:
        return sum(count_params(m.spec)[0] for m in self.model.models)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict_proba(x)


def load_ensemble(path: str | os.PathLike) -> EnsembleRun:
    """Open an ensemble directory (or its .safetensors file), like runs.load_run opens a run."""
    path = Path(path)
    base = path if is_dir(path) else path.parent
    model = load_ensemble_model(path)
    return EnsembleRun(base, model, checked_config(base / "config.json", ("data", "limit_test")),
                       read_json(base / "metrics.json", {}), file=None if is_dir(path) else path,
                       classes=read_classes(base))


# ---------------------------------------------------------------------------------------------------
# evaluation and training of members


def _validation_key(config: dict[str, Any]) -> tuple | None:
    """What fixes a run's validation images; None when it had none."""
    if not (config.get("validation_split") or config.get("val_size")):
        return None
    return (config.get("data"), config.get("limit_train"), config.get("validation_split"), config.get("val_size"))


def _short(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "loss", "errors", "count") if k in metrics}


def evaluate_ensemble(runs: Sequence[Run], *, tta: bool = False, data: MnistData | None = None,
                      limit_test: int | None = None, log: Callable[[str], None] = print) -> tuple[EnsembleModel, dict]:
    """Every member and the ensemble on the test set (and on the members' common validation split, if any).

    Returns (the ensemble model, metrics). Metrics hold `members` (test accuracy each), the ensemble's test
    metrics, and `validation` with the ensemble's accuracy with and without TTA when the members share a
    validation split: that, not the test set, is where to decide whether TTA is worth it.
    """
    _check_members(runs)
    data = data if data is not None else members_data(runs)[1]
    x_test, y_test = data.x_test[:limit_test], data.y_test[:limit_test]
    plain = ensemble_of([r.model for r in runs], False, _sources(runs))
    model = plain.with_shifts(DEFAULT_SHIFTS) if tta else plain
    member_logits = [predict_logits(r.model, x_test) for r in runs]
    members = []
    for r, logits in zip(runs, member_logits):
        m = metrics_from_logits(logits, y_test)
        members.append({"run_dir": str(r.source), "model": r.name, **_short(m)})
        log(f"member {r.source}: test accuracy {m['accuracy'] * 100:.2f}% ({m['errors']} errors)")
    if tta:
        metrics = evaluate(model, x_test, y_test)
    else:  # the members' logits are already here: average their softmax instead of running them again
        probs = torch.stack([torch.softmax(lg, 1) for lg in member_logits]).mean(0)
        metrics = metrics_from_logits(log_probabilities(probs), y_test)
    metrics.update(members=members, tta=tta, shifts=[list(s) for s in model.shifts], size=len(runs),
                   member_mean_accuracy=sum(m["accuracy"] for m in members) / len(members))
    keys = {_validation_key(r.config) for r in runs}
    if len(keys) == 1 and None not in keys:
        c = runs[0].config
        x_all, y_all = data.x_train[:c.get("limit_train")], data.y_train[:c.get("limit_train")]
        _, _, x_val, y_val = split_validation(x_all, y_all, validation_split=c.get("validation_split"),
                                              val_size=c.get("val_size"))
        val = {"count": len(y_val),
               "members": [metrics_from_logits(predict_logits(r.model, x_val), y_val)["accuracy"] for r in runs],
               "ensemble": metrics_from_logits(predict_logits(plain, x_val), y_val)["accuracy"],
               "ensemble_tta": metrics_from_logits(predict_logits(plain.with_shifts(DEFAULT_SHIFTS), x_val),
                                                   y_val)["accuracy"]}
        metrics["validation"] = val
        log(f"validation ({val['count']} images): ensemble {val['ensemble'] * 100:.2f}%, "
            f"with TTA {val['ensemble_tta'] * 100:.2f}%")
    log(f"ensemble of {len(runs)}{' with TTA' if tta else ''}: test accuracy {metrics['accuracy'] * 100:.2f}% "
        f"({metrics['errors']} errors); members' mean {metrics['member_mean_accuracy'] * 100:.2f}%")
    return model, metrics


def check_ensemble_out(out: str | os.PathLike) -> Path:
    """An ensemble directory may be new or an ensemble's; not a file, nor a training run's folder."""
    out = Path(out)
    if out.suffix == ".safetensors":  # save_ensemble's single file; a command writes a whole folder
        raise MnistCnnError(f"--out {out}: an ensemble is written as a folder (ensemble.safetensors, metrics.json, "
                            "config.json inside); give a folder name")
    check_out(out, "ensemble")
    if exists(out / "members") and not (out / "members").is_dir():
        raise MnistCnnError(f"{describe(out / 'members')} is a file, not a folder; write the ensemble to another --out")
    return out


def write_ensemble(out: str | os.PathLike, model: EnsembleModel, metrics: dict[str, Any], *,
                   data: str | os.PathLike | None = None, limit_test: int | None = None,
                   classes: tuple[str, ...] | None = None) -> Path:
    """The ensemble directory: ensemble.safetensors + metrics.json + config.json (its members, and the test data
    it was measured on, which `mnist-cnn evaluate ENSEMBLE_DIR` tests again as it does for a run)."""
    with claim(check_ensemble_out(out), "ensemble") as folder:
        save_ensemble(folder, model)
        atomic_write_json(folder / "metrics.json", metrics)
        atomic_write_json(folder / "config.json", {"kind": "ensemble", "members": model.sources,
                                                   "shifts": [list(s) for s in model.shifts],
                                                   "data": None if data is None else recorded_path(data),
                                                   "limit_test": limit_test})
        write_classes(folder, classes)
    return folder


def members_data(runs: Sequence[Run], data: str | os.PathLike | None = None) -> tuple[str | os.PathLike | None,
                                                                                 MnistData]:
    """(its path, the data set) the members are measured on: `data` if given, else the one they were trained on.
    Runs trained on different data are refused unless `data` names the test set: one ensemble, one question."""
    sources = {run.config.get("data") for run in runs}
    if len(sources) > 1 and not data:
        names = sorted(str(source or "the bundled MNIST") for source in sources)
        raise MnistCnnError(f"the runs were trained on different data ({', '.join(names)}); "
                            f"ensemble runs of one data set, or name the test data with --data")
    path = data or next(iter(sources), None)
    try:
        return path, load_mnist(path)
    except MnistCnnError as e:
        raise MnistCnnError(f"{e}{'' if data else '; the runs were trained on it: give --data where it is now'}"
                            ) from None


DEFAULT_MEMBER_RECIPE = "best"


def member_config(*, model: str | None = None, recipe: str | None = None, **options: Any) -> Any:
    """The TrainConfig of members trained for an ensemble: the "best" recipe unless a model or recipe is named."""
    from .training import make_config  # training is only needed here; keep `import ensemble` light

    return make_config(model=model, recipe=recipe or (None if model else DEFAULT_MEMBER_RECIPE), **options)


def train_members(config: Any, n: int, *, data: MnistData | None = None, out: str | os.PathLike | None = None,
                  seeds: Sequence[int] | None = None, log: Callable[[str], None] = print) -> list[Run]:
    """Train n members from one TrainConfig with seeds config.seed, config.seed + 1, ...

    Member k goes to OUT/seed-{seed}, through `reuse_or_train`: a finished run of the same config is loaded and an
    interrupted one resumed, so an interrupted call can be rerun.
    """
    if not isinstance(n, int) or n < 1:
        raise MnistCnnError(f"number of ensemble members must be a positive integer, got {n!r}")
    seeds = list(seeds) if seeds is not None else [config.seed + k for k in range(n)]
    if len(seeds) != n:
        raise MnistCnnError(f"got {len(seeds)} seeds for {n} members")
    with claim(check_ensemble_out(out or config.out or "runs/ensemble"), "ensemble") as folder:
        runs = []  # each member is a run folder of its own under the ensemble's, which is marked as one first
        for seed in seeds:
            member = dataclasses.replace(config, seed=seed, out=str(folder / "members" / f"seed-{seed}"))
            runs.append(reuse_or_train(member, data=data, log=log))
    return runs
