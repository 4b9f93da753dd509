"""A run folder of this very config is reused, not trained again: what makes re-running an ensemble, a grid or a
notebook cell safe. "This very config" is every option but where the run goes and where it runs, and the spec."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .budgets import exists
from .data import MnistData
from .errors import MnistCnnError, TrainingInterrupted
from .runs import Run, checkpoint_paths, load_run, read_json
from .spec import parse_spec
from .training.config import PLACEMENT, SAVED_WITHOUT


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in ("out", "verbose", *PLACEMENT)}


def config_differences(config: Any) -> list[str]:
    """The options (and 'spec') in which the run in config.out was started otherwise than `config` asks: [] when
    it was started with this very config, ['out'] when there is no run there."""
    out = Path(config.out) if config.out else None
    if out is None or not exists(out / "config.json"):
        return ["out"]
    saved = _comparable({**SAVED_WITHOUT, **read_json(out / "config.json", {})})
    wanted = _comparable(config.to_dict())
    differences = [k for k in dict.fromkeys([*wanted, *saved]) if saved.get(k) != wanted.get(k)]
    saved_spec = read_json(out / "spec.json", {})
    spec = config.model_spec(_num_classes(saved_spec)).to_dict()  # a spec file may have been edited since
    return differences + (["spec"] if saved_spec != spec else [])


def _num_classes(spec: dict[str, Any]) -> int:
    """The class count a saved spec.json gives (its head follows the data it was trained on); 10 if unreadable."""
    try:
        return parse_spec(spec, "spec.json").num_classes
    except MnistCnnError:
        return 10


def reuse_or_train(config: Any, *, data: MnistData | None = None, log: Callable[[str], None] = print) -> Run:
    """The run in config.out if it was trained with this very config (resumed if it was interrupted), else a fresh
    training there: the folder belongs to the ensemble or experiment, so an older config's run is replaced."""
    from .training import train  # here: training imports the modules this one does

    out = Path(config.out) if config.out else None
    resume = None
    if out is not None and not config_differences(config):
        if exists(out / "metrics.json") and exists(out / "model.safetensors"):
            log(f"reusing finished run {out}")
            return load_run(out)
        resume = out if checkpoint_paths(out) else None
    try:
        return train(config, data, resume=resume, overwrite=resume is None, log=log)
    except TrainingInterrupted as e:  # one run of many: the same command resumes it, then goes on to the others
        raise TrainingInterrupted(f"interrupted while training {e.run_dir}, whose checkpoint is kept: run the same "
                                  "command again to continue", e.signum, e.run_dir) from None
