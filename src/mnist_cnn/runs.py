"""Run directories and checkpoints: safetensors + JSON, checksummed, written atomically, never pickled.

    RUN_DIR/
      model.safetensors        final weights; the spec travels in the file's metadata
      spec.json  config.json   the architecture and every training option
      history.json history.csv one row per epoch (loss, accuracy, val_loss, val_accuracy, lr, seconds)
      metrics.json             the test-set evaluation, written once at the end
      classes.json             {"classes": [names]}: only when the classes are not the ten digits
      checkpoints/ckpt-*.safetensors   model + optimiser + EMA + RNG states + position, newest kept
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import reprlib
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from .budgets import DOCUMENT_BYTES, WEIGHTS_BYTES, describe, exists, is_dir, is_file, read_bytes
from .data import MnistData, checked_classes, load_mnist
from .display import history_table, html_table
from .errors import MnistCnnError
from .models import SpecModel, build_model, count_params
from .spec import ModelSpec, parse_spec

M = TypeVar("M", bound=torch.nn.Module)

FORMAT = "mnist-cnn/1"
DAMAGED = ".damaged"  # a checkpoint that failed its check is renamed CKPT.safetensors.damaged
ENSEMBLE_FILE = "ensemble.safetensors"  # what marks an ensemble directory (mnist_cnn.ensemble)
#: Files named like PyTorch/pickle/Keras weights, or starting like a pickle or torch.save's zip, are refused unless
#: they hold safetensors: unpickling runs whatever code the file's author put in it. We read safetensors + JSON only.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".h5", ".hdf5", ".keras")
CHECKPOINT_KEEP = 2  # the newest checkpoints kept, so a damaged newest one still leaves one to resume from


def _digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps({k: v for k, v in sorted(meta.items()) if k != "sha256"}).encode())
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """A safetensors file whose metadata (JSON values) carries a SHA-256 of everything in it."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    str_meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
    str_meta["sha256"] = _digest(tensors, str_meta)
    return atomic_write_bytes(path, st_save(tensors, metadata=str_meta))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a file written by `save_tensors`; a damaged file gets an error naming it."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":  # an export of ours, most likely: say what is wanted instead
        raise MnistCnnError(f"{path} is an ONNX model, which onnxruntime runs; mnist-cnn reads a run directory or "
                            "its .safetensors weights")
    raw = read_bytes(path, WEIGHTS_BYTES, "weights")
    head = raw[:9]
    pickled = head[:1] == b"\x80" or head[:4] == b"PK\x03\x04" or path.suffix.lower() in PICKLE_SUFFIXES
    if pickled and head[8:9] != b"{":  # a safetensors file starts with its header's length, then '{'
        raise MnistCnnError(f"{path}: refusing to load a PyTorch/pickle file: unpickling can run arbitrary "
                            "code; mnist-cnn reads only safetensors + JSON (a run directory or its "
                            "model.safetensors)")
    try:
        header = _safetensors_header(raw)
        tensors = st_load(raw)
        str_meta = header.get("__metadata__") or {}
        if not all(isinstance(v, str) for v in str_meta.values()):
            raise ValueError("metadata values must be strings")
    except (SafetensorError, ValueError, UnicodeDecodeError, RuntimeError, AttributeError, KeyError, TypeError) as e:
        raise MnistCnnError(f"{path} is damaged or not a safetensors file ({str(e).splitlines()[0]})") from None
    if str_meta.get("format") != FORMAT:
        raise MnistCnnError(f"{path} was not written by mnist-cnn (format {str_meta.get('format')!r}, "
                            f"expected {FORMAT!r})")
    if str_meta.get("sha256") != _digest(tensors, str_meta):
        raise MnistCnnError(f"{path} is damaged: its checksum does not match its contents")
    try:
        meta = {k: json.loads(v) for k, v in str_meta.items() if k not in ("format", "sha256")}
    except (ValueError, RecursionError) as e:
        raise MnistCnnError(f"{path}: its metadata is not valid JSON ({str(e).splitlines()[0]})") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise MnistCnnError(f"{path}: tensor {name!r} holds NaN or infinite values; a model with them predicts "
                                "nothing (retrain, or resume from an earlier checkpoint)")
    return tensors, meta


def _safetensors_header(raw: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file, whose tensors' declared sizes must add up to the bytes present:
    checked before anything is allocated, so a tiny file cannot claim a large model."""
    if len(raw) < 8:
        raise ValueError("shorter than the 8-byte header length")
    header_len = int.from_bytes(raw[:8], "little")
    if header_len > len(raw) - 8:
        raise ValueError(f"its header claims {header_len:,} bytes, the file holds {len(raw) - 8:,}")
    header = json.loads(raw[8:8 + header_len])
    if not isinstance(header, dict):
        raise TypeError("its header is not a JSON object")
    declared = 0
    for name, entry in header.items():
        if name != "__metadata__":
            _, end = entry["data_offsets"]
            declared = max(declared, end)
    if declared != len(raw) - 8 - header_len:
        raise ValueError(f"its tensors declare {declared:,} bytes of data, the file holds "
                         f"{len(raw) - 8 - header_len:,}")
    return header


def save_weights(path: str | os.PathLike, model: SpecModel, extra: dict[str, Any] | None = None) -> Path:
    return save_tensors(path, model.state_dict(), {"spec": model.spec.to_dict(), **(extra or {})})


def load_weights(path: str | os.PathLike) -> SpecModel:
    """Rebuild a model from a weights file alone: the spec travels in its metadata."""
    tensors, meta = load_tensors(path)
    if "spec" not in meta:
        raise MnistCnnError(f"{path} holds no model spec in its metadata (is it a checkpoint or an ensemble?)")
    spec = parse_spec(meta["spec"], str(path))
    check_declared([spec], tensors, path)
    return fill_weights(build_model(spec), tensors, f"{path}: weights do not fit its spec")


def check_declared(specs: list[ModelSpec], tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse specs whose weights outnumber those in the file before building them: a few hundred bytes of
    metadata must not allocate a 99M-parameter model. Counted on the meta device, which allocates nothing."""
    declared = 0
    for spec in specs:
        with torch.device("meta"):
            declared += sum(t.numel() for t in SpecModel(spec).state_dict().values())
    present = sum(t.numel() for t in tensors.values())
    if declared > present:
        raise MnistCnnError(f"{describe(path)}: its metadata's spec{'s' if len(specs) > 1 else ''} declare "
                            f"{declared:,} weights, but the file holds {present:,}: it is damaged or was edited")


def fill_weights(model: M, tensors: dict[str, torch.Tensor], mismatch: str) -> M:
    """Load tensors into model (eval mode); a mismatch is one line: `mismatch` and torch's first line."""
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise MnistCnnError(f"{mismatch} ({str(e).splitlines()[0]})") from None
    return model.eval()


@dataclass
class Run:
    """A training run on disk: its model, spec, config, history and test metrics."""

    path: Path
    model: SpecModel
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None  # a weights file opened on its own; None: the run directory's model.safetensors
    classes: tuple[str, ...] | None = None  # the name of each class; None: the digits 0..9

    @property
    def source(self) -> Path:
        """What the run was opened from: its directory, or the weights file."""
        return self.weights or self.path

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_params(self) -> int:
        return count_params(self.spec)[0]

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict_proba(x)

    def __repr__(self) -> str:
        tested = f", test accuracy {self.metrics['accuracy']:.2%}" if "accuracy" in self.metrics else ""
        return (f"Run({str(self.source)!r}: {self.name}, {self.num_params:,} params, "
                f"{len(self.history)} epoch{'s' if len(self.history) != 1 else ''}{tested})")

    def _repr_html_(self) -> str:
        facts = [("model", self.name), ("parameters", f"{self.num_params:,}"), ("epochs", len(self.history)),
                 ("test accuracy", f"{self.metrics['accuracy']:.2%}" if "accuracy" in self.metrics else "-"),
                 ("test loss", f"{self.metrics['loss']:.4f}" if "loss" in self.metrics else "-")]
        return (f"<p>Run <code>{escape(str(self.source))}</code></p>" + html_table(("", ""), facts)
                + (history_table(self.history) if self.history else ""))

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        self.metrics = metrics
        atomic_write_json(self.path / "metrics.json", metrics)


def read_json(path: Path, default: Any) -> Any:
    """The JSON in `path` (`default` when there is no such file); it must be of `default`'s type (dict/list)."""
    if not exists(path):
        return default
    try:
        value = json.loads(read_bytes(path, DOCUMENT_BYTES, "JSON"))
    except (ValueError, RecursionError) as e:
        raise MnistCnnError(f"{describe(path)} is not valid JSON ({str(e).splitlines()[0] or 'nested too deeply'})"
                            ) from None
    if not isinstance(value, type(default)):
        raise MnistCnnError(f"{path}: expected a JSON {'object' if isinstance(default, dict) else 'list'}, "
                            f"got {type(value).__name__}")
    if isinstance(value, list) and not all(isinstance(row, dict) for row in value):
        raise MnistCnnError(f"{path}: expected a JSON list of objects (one per epoch)")
    return value


def load_run(run_dir: str | os.PathLike | Run) -> Run:
    """Open a run directory (or a weights .safetensors file) for evaluation, prediction or export; a Run is
    returned as it is."""
    if isinstance(run_dir, Run):
        return run_dir
    path = Path(run_dir)
    if not exists(path):
        raise MnistCnnError(f"{path} does not exist: expected a run directory or its model.safetensors")
    weights = path if is_file(path) else path / "model.safetensors"
    if exists(path / ENSEMBLE_FILE):
        raise MnistCnnError(f"{path} is an ensemble directory, not a run directory: evaluate, predict, export and "
                            f"serve take it; report and explain take one of its members (its config.json lists them)")
    if not exists(weights) and is_dir(path) and read_json(path / "config.json", {}).get("kind") == "ensemble":
        raise MnistCnnError(f"{path} is an ensemble directory without its {ENSEMBLE_FILE}: make it again with "
                            f"`mnist-cnn ensemble RUN_DIR... --out {path}`")
    if not exists(weights) and (checkpoint_paths(path) or exists(path / "spec.json")):
        raise MnistCnnError(f"{path} holds an interrupted run (no model.safetensors yet); finish it with "
                            f"`mnist-cnn train --resume {path}`")
    if not exists(weights):
        raise MnistCnnError(f"{path} is not a run directory: {weights.name} not found (train one with "
                            f"`mnist-cnn train --out {path}`)")
    base = weights.parent
    if weights.name != "model.safetensors":  # a weights file on its own: JSON files beside it are not its run's
        return Run(base, load_weights(weights), weights=weights)
    return Run(base, load_weights(weights), checked_config(base / "config.json"),
               _checked_history(base / "history.json"), read_json(base / "metrics.json", {}),
               classes=read_classes(base))


CLASSES_FILE = "classes.json"


def write_classes(run_dir: Path, classes: tuple[str, ...] | None) -> None:
    """Record the class names in the run (nothing for the ten digits, so MNIST runs stay as they were)."""
    if classes is not None:
        atomic_write_json(run_dir / CLASSES_FILE, {"classes": list(classes)})


def read_classes(run_dir: Path) -> tuple[str, ...] | None:
    """The run's class names (None: the digits 0..9)."""
    path = run_dir / CLASSES_FILE
    if not exists(path):
        return None
    names = read_json(path, {}).get("classes")
    if not isinstance(names, list):
        raise MnistCnnError(f'{path}: expected {{"classes": [a name per class]}}')
    return checked_classes(names, str(path))


def checked_config(path: Path, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """config.json as read back, its options (or those in `only`) held to TrainConfig's own validation: a file
    edited by hand gets one line, not a traceback where a value is used ("data": 5, "limit_test": -5)."""
    config = read_json(path, {})
    from .training.config import TrainConfig, validate  # here: training imports this module

    known = {f.name for f in dataclasses.fields(TrainConfig)} & set(only or config)
    try:
        validate(TrainConfig(**{k: config[k] for k in known if k in config}))
    except MnistCnnError as e:
        raise MnistCnnError(f"{describe(path)}: {e}") from None
    return config


def _checked_history(path: Path) -> list[dict[str, Any]]:
    """history.json's rows, each with an integer epoch, a loss and an accuracy, and numbers only."""
    history = read_json(path, [])
    for i, row in enumerate(history):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values())
        if not (numbers and isinstance(row.get("epoch"), int) and {"loss", "accuracy"} <= row.keys()):
            raise MnistCnnError(f"{path}: row {i} should hold an integer epoch and numbers for loss, accuracy and "
                                f"the rest, got {reprlib.repr(row)}")
    return history


def run_data(run: Any, path: str | os.PathLike | None = None) -> MnistData:
    """The test set of the data the run (a Run, an EnsembleRun, any opened model source) was trained on (its
    config's `data`: None is the bundled MNIST), or of `path` instead; the training split is not read (it is empty)."""
    if path is not None:
        return load_mnist(path, test_only=True)
    try:
        return load_mnist(run.config.get("data"), test_only=True)
    except MnistCnnError as e:
        what = f"the ensemble {run.path} was measured" if run.config.get("kind") == "ensemble" else \
            f"the run {run.path} was trained"
        raise MnistCnnError(f"{e}; {what} on it: give --data where it is now") from None


RUN_FILES = ("model.safetensors", "best.safetensors", "metrics.json", "history.json", "history.csv", "config.json",
             "spec.json", CLASSES_FILE)


def is_run_file(run_dir: Path, path: Path) -> bool:
    """Whether `path` is (or would replace) one of the run's own files or checkpoints."""
    path, run_dir = path.resolve(), run_dir.resolve()
    return (path.parent == run_dir and path.name in RUN_FILES) or run_dir / "checkpoints" in path.parents


def remove_run_files(run_dir: Path) -> None:
    """Delete a run's own files and checkpoints from run_dir, and nothing else that may be there."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for path in [*checkpoint_paths(run_dir), *_damaged(run_dir)]:
        path.unlink(missing_ok=True)


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_json(run_dir / "history.json", history)
    columns = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / "history.csv", buf.getvalue())


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Checkpoints, newest first."""
    return sorted((run_dir / "checkpoints").glob("ckpt-*.safetensors"), reverse=True)


def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write a checkpoint, then drop all but the newest CHECKPOINT_KEEP; the previous one stays until then."""
    path = save_tensors(run_dir / "checkpoints" / f"ckpt-{step:09d}.safetensors", tensors, meta)
    for old in checkpoint_paths(run_dir)[CHECKPOINT_KEEP:]:
        old.unlink(missing_ok=True)
    return path


def _damaged(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob(f"ckpt-*.safetensors{DAMAGED}"))


def has_trained(run_dir: Path) -> bool:
    """Whether any training left a trace in run_dir: a checkpoint (whole or damaged), weights, history."""
    return bool(checkpoint_paths(run_dir) or _damaged(run_dir) or any(
        (run_dir / name).exists() for name in RUN_FILES if name not in ("config.json", "spec.json", CLASSES_FILE)))


def latest_checkpoint(run_dir: Path, warn=print) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The newest checkpoint that verifies; damaged ones are reported, set aside and skipped."""
    paths = checkpoint_paths(run_dir)
    if not paths and not _damaged(run_dir):  # ones an earlier try set aside are refused below, as then
        raise MnistCnnError(f"{run_dir} has no checkpoints to resume from (looked in {run_dir / 'checkpoints'})")
    for path in paths:
        try:
            return _checked_checkpoint(path, *load_tensors(path))
        except MnistCnnError as e:
            aside = path.with_name(path.name + DAMAGED)
            with contextlib.suppress(OSError):  # another torchrun process may have moved it already
                path.replace(aside)  # out of the rotation, which would otherwise delete a good one before it
            warn(f"warning: skipping checkpoint: {e} (kept as {aside.name})")
    raise MnistCnnError(f"every checkpoint in {run_dir / 'checkpoints'} is damaged; cannot resume")


#: what a checkpoint's metadata holds, with the JSON type of each (train's checkpoint state writes them)
CHECKPOINT_META = {"step": int, "history": list, "waited": int, "optimizer": dict, "config": dict, "spec": dict}


def _checked_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
                        ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint whose metadata has every entry resuming reads, of the right type (and its sums tensor)."""
    for key, kind in CHECKPOINT_META.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise MnistCnnError(f"{path}: its metadata has no {kind.__name__} {key!r} "
                                f"(got {reprlib.repr(meta.get(key))})")
    if "best" not in meta or "sums" not in tensors:
        raise MnistCnnError(f"{path}: its metadata has no 'best', or it holds no 'sums' tensor")
    return tensors, meta
