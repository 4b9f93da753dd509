"""Keras model files in and out, read and written with h5py alone (no TensorFlow, no Keras).

Reads the three files Keras users have:
  - Keras 2 HDF5 (`model.save('keras_cnn.h5')`): the `model_config` attribute + the `model_weights` group;
  - Keras 3 legacy HDF5 (`.h5`), the same layout with Keras 3's weight names;
  - Keras 3 `.keras` zips: config.json + model.weights.h5 (`layers/<snake_case class>[_n]/vars/<i>`) + metadata.json.
Writes the `.keras` zip, which `keras.saving.load_model` opens (benchmarks/keras_roundtrip.py checks it).

Layouts: Keras keeps tensors NHWC, kernels HWIO and Dense kernels (in, out); ours are OIHW and (out, in). Our
Flatten already flattens in Keras's (H, W, C) order (models.KerasReshape), so a Dense kernel after it needs
only its transpose. BatchNormalization's variables are gamma, beta, moving mean, moving variance, in that order.

A model file is untrusted: it is refused over `max_bytes`, its config is checked like Keras's safe_mode does
(keras_config.refuse_code), a dataset is read only once its shape matches what the spec expects (and the spec's
size is bounded by spec.MAX_PARAMS), HDF5 links to other files and external storage are refused, and nothing
in it is executed or unpickled.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write_bytes
from .errors import MnistCnnError
from .keras_config import keras_config, spec_from_keras
from .models import BatchNorm, SpecModel, build_model
from .runs import Run, fill_weights
from .spec import ModelSpec, infer_shapes

MAX_BYTES = 512 * 2**20  # a Keras file larger than this is refused before it is opened (ours are under 11 MB)
MAX_CONFIG_BYTES = 16 * 2**20  # the model config JSON (the fixtures' are under 20 KB)
SUFFIXES = (".h5", ".hdf5", ".keras")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
KERAS_VERSION = "3.15.1"  # the Keras whose .keras layout write_keras mirrors (the fixtures' writer)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # Keras dates its zip entries so; the file's bytes then depend on the model only

try:  # h5py is needed only for Keras files; its absence is one line when one is opened
    import h5py
except ImportError:  # pragma: no cover - h5py is a dependency of the keras extra
    h5py = None


def is_keras_file(path: str | os.PathLike) -> bool:
    """Whether `path` names a Keras model file (by its suffix, or an HDF5 signature): what sources dispatch on."""
    path = Path(path)
    if path.suffix.lower() in SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def read_keras(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The spec (named after the file) and a state dict for `models.build_model(spec)` of a Keras model file."""
    model = load_keras(path, max_bytes=max_bytes)
    return model.spec, model.state_dict()


def load_keras(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> SpecModel:
    """The Keras file's model, built and filled with its weights, in eval mode."""
    path = Path(path)
    _check_size(path, max_bytes)
    if h5py is None:
        raise MnistCnnError(f"{path}: reading Keras files needs h5py: pip install 'mnist-cnn[keras]'")
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path, max_bytes)
        with open(path, "rb") as f:
            if f.read(8) != HDF5_SIGNATURE:
                raise MnistCnnError(f"{path} is neither a Keras .keras zip nor an HDF5 (.h5) file")
        with h5py.File(path, "r") as h5:
            return _read_h5(h5, path)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, zipfile.BadZipFile) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MnistCnnError(f"{path} is damaged or not a Keras model file ({first})") from None


def keras_run(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES) -> Run:
    """The Keras file as a Run (no config, history or metrics): what the commands that take a run open."""
    path = Path(path)
    return Run(path.parent, load_keras(path, max_bytes=max_bytes), weights=path)


def _check_size(path: Path, max_bytes: int) -> None:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise MnistCnnError(f"cannot read {path}: {e.strerror or e}") from None
    if size > max_bytes:
        raise MnistCnnError(f"{path} is {size:,} bytes, more than the limit of {max_bytes:,} for a Keras file "
                            "(max_bytes)")


def _json(raw: bytes | str, what: str) -> Any:
    if len(raw) > MAX_CONFIG_BYTES:
        raise MnistCnnError(f"{what} is {len(raw):,} bytes, more than the limit of {MAX_CONFIG_BYTES:,}")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise MnistCnnError(f"{what} is not valid JSON ({str(e)[:80]})") from None


def _read_zip(path: Path, max_bytes: int) -> SpecModel:
    with zipfile.ZipFile(path) as archive:
        config = _json(_member(archive, path, "config.json", MAX_CONFIG_BYTES), f"{path}: config.json")
        weights = _member(archive, path, "model.weights.h5", max_bytes)
    spec, layers = spec_from_keras(config, path.stem, str(path))
    with h5py.File(io.BytesIO(weights), "r") as h5:
        groups = [_group(h5, f"layers/{group}/vars", path) for _, group in layers]
        return _filled(spec, [_numbered(g, path) for g in groups], path)


def _member(archive: zipfile.ZipFile, path: Path, name: str, limit: int) -> bytes:
    """One member of the zip, read at most `limit` bytes: the sizes in a zip's directory may lie."""
    if name not in archive.namelist():
        raise MnistCnnError(f"{path}: the .keras zip has no {name} (it holds {', '.join(archive.namelist()[:5])})")
    with archive.open(name) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise MnistCnnError(f"{path}: {name} holds more than the limit of {limit:,} bytes")
    return data


def _read_h5(h5: Any, path: Path) -> SpecModel:
    if "model_config" not in h5.attrs:
        raise MnistCnnError(f"{path} holds no model_config: a weights-only file (save_weights) has no architecture; "
                            "save the whole model with model.save()")
    stored = h5.attrs.get_id("model_config").get_storage_size()
    if stored > MAX_CONFIG_BYTES:
        raise MnistCnnError(f"{path}: model_config is {stored:,} bytes, more than the limit of {MAX_CONFIG_BYTES:,}")
    config = _json(h5.attrs["model_config"], f"{path}: model_config")
    spec, layers = spec_from_keras(config, path.stem, str(path))
    root = _group(h5, "model_weights", path) if "model_weights" in h5 else h5
    weights = []
    for name, _ in layers:
        group = _group(root, name, path)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
        weights.append([_link(group, n, path) for n in names])
    return _filled(spec, weights, path)


def _link(group: Any, name: str, path: Path) -> Any:
    """group[name], following only links inside the file: an external link could read another file."""
    if name not in group:
        raise MnistCnnError(f"{path}: no {group.name}/{name} in the file")
    node = group
    for part in name.split("/"):
        if not isinstance(node.get(part, getlink=True), h5py.HardLink):
            raise MnistCnnError(f"{path}: {node.name}/{part} links outside the file; refused")
        node = node[part]
    return node


def _group(parent: Any, name: str, path: Path) -> Any:
    node = _link(parent, name, path)
    if not isinstance(node, h5py.Group):
        raise MnistCnnError(f"{path}: {node.name} should be a group of weights")
    return node


def _numbered(group: Any, path: Path) -> list[Any]:
    """A Keras 3 `vars` group's datasets, 0, 1, ... in order."""
    return [_link(group, str(i), path) for i in range(len(group))]


def _to_keras(t: torch.Tensor) -> np.ndarray:
    """OIHW -> HWIO, (out, in) -> (in, out); vectors as they are."""
    t = t.detach().cpu().float()
    return (t.permute(2, 3, 1, 0) if t.dim() == 4 else t.T if t.dim() == 2 else t).contiguous().numpy()


def _from_keras(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return (t.permute(3, 2, 0, 1) if t.dim() == 4 else t.T if t.dim() == 2 else t).contiguous()


def _slots(model: SpecModel) -> list[list[str]]:
    """For each spec layer, the state-dict keys of its Keras variables, in Keras's order."""
    slots = []
    for i, layer in enumerate(model.layers):
        keys = []
        for name, module in layer.named_modules(prefix=f"layers.{i}"):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                keys += [f"{name}.weight"] + ([f"{name}.bias"] if module.bias is not None else [])
            elif isinstance(module, BatchNorm):  # gamma, beta, moving mean, moving variance
                keys += [f"{name}.{v}" for v in ("weight", "bias", "running_mean", "running_var")]
        slots.append(keys)
    return slots


def _filled(spec: ModelSpec, weights: list[list[Any]], path: Path) -> SpecModel:
    """Our model with each layer's Keras datasets as its weights; every shape is checked before a dataset is read."""
    model = build_model(spec)
    state = model.state_dict()
    for layer, keys, datasets in zip(spec.layers, _slots(model), weights):
        where = f"{path}: layer {layer.type}"
        if len(datasets) != len(keys):
            raise MnistCnnError(f"{where} holds {len(datasets)} weight arrays, expected {len(keys)}")
        for key, data in zip(keys, datasets):
            expected = _to_keras(state[key]).shape
            if not isinstance(data, h5py.Dataset) or data.shape != expected or data.dtype.kind != "f":
                got = f"{data.dtype} {data.shape}" if isinstance(data, h5py.Dataset) else type(data).__name__
                raise MnistCnnError(f"{where}: weight {data.name} should be float {expected}, got {got}")
            if data.external or data.is_virtual:
                raise MnistCnnError(f"{where}: weight {data.name} keeps its data outside the file; refused")
            state[key] = _from_keras(data[()])
    return fill_weights(model, state, f"{path}: weights do not fit its architecture")


def keras_bytes(model: SpecModel) -> bytes:
    """The `.keras` zip of a model: Keras 3's config.json, metadata.json and model.weights.h5."""
    spec = model.spec
    config, names = keras_config(spec, infer_shapes(spec))
    state = model.state_dict()
    weights = io.BytesIO()
    with h5py.File(weights, "w") as h5:
        for name, keys in zip(names, _slots(model)):
            group = h5.create_group(f"layers/{name}").create_group("vars")
            group.attrs["name"] = name
            for j, key in enumerate(keys):
                group.create_dataset(str(j), data=_to_keras(state[key]))
        h5.create_group("vars").attrs["name"] = config["config"]["name"]
    metadata = {"keras_version": KERAS_VERSION, "date_saved": datetime.now(timezone.utc).strftime("%Y-%m-%d@%H:%M:%S")}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in (("metadata.json", json.dumps(metadata).encode()),
                           ("config.json", json.dumps(config).encode()), ("model.weights.h5", weights.getvalue())):
            archive.writestr(zipfile.ZipInfo(name, _ZIP_DATE), data)
    return out.getvalue()


def write_keras(model: nn.Module | ModelSpec, path: str | os.PathLike,
                state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a Keras 3 `.keras` file atomically: a built model (SpecModel), or a spec with its state dict."""
    if h5py is None:
        raise MnistCnnError("writing Keras files needs h5py: pip install 'mnist-cnn[keras]'")
    if isinstance(model, ModelSpec):
        if state_dict is None:
            raise MnistCnnError(f"write_keras: spec {model.name!r} given without its state_dict")
        model = fill_weights(build_model(model), state_dict, f"write_keras: state_dict does not fit {model.name!r}")
    elif not isinstance(model, SpecModel):
        raise MnistCnnError(f"cannot write {type(model).__name__} as a Keras model: Keras takes one Sequential model "
                            "(a SpecModel or a spec with its weights), not an ensemble")
    return atomic_write_bytes(path, keras_bytes(model))
