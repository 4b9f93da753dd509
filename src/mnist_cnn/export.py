"""Ship a trained model: ONNX, TorchScript, safetensors or Keras, each checked against PyTorch.

Every format takes the model's input, float32 [N, 1, 28, 28] in [0, 1] (white ink on black, as
`mnist_cnn.preprocess` makes it, divided by 255), N free; none needs this package to load.

ONNX (opset 18, input "image", outputs "logits" [N, 10] and "probabilities" [N, 10])::

    import numpy as np, onnxruntime as ort
    session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    x = np.zeros((1, 1, 28, 28), np.float32)          # your images / 255.0
    logits, probabilities = session.run(None, {"image": x})
    digit = probabilities.argmax(1)
    # the spec, run name and test accuracy are in session.get_modelmeta().custom_metadata_map, and for
    # named classes (letters, folder names) "classes": a JSON list, the name of each output column

TorchScript (returns the logits; apply softmax for probabilities)::

    import json, torch
    extra = {"spec.json": ""}
    model = torch.jit.load("model.pt", map_location="cpu", _extra_files=extra).eval()
    probabilities = torch.softmax(model(torch.zeros(1, 1, 28, 28)), dim=1)
    spec = json.loads(extra["spec.json"])
    # named classes: ask for "classes.json" too (a JSON list of names; absent for the ten digits)

safetensors (the weights plus the architecture as JSON in the file's metadata)::

    import json
    from safetensors import safe_open
    from safetensors.torch import load_file
    weights = load_file("model.safetensors")         # {"layers.0.0.weight": tensor, ...}
    with safe_open("model.safetensors", "pt") as f:
        spec = json.loads(f.metadata()["spec"])       # {"name": ..., "layers": [...]}
    # Keys are PyTorch names: layers.<i>.<j>.weight is spec layer i, conv kernels OIHW.
    # With this package: mnist_cnn.runs.load_weights("model.safetensors") rebuilds the model.

An ensemble (`mnist-cnn ensemble ... --out DIR`, then `export DIR`) exports as ONNX or TorchScript: one graph
that averages its members' softmax (over the TTA shifts too); its "logits" are the log of that average, and
"spec" in the metadata lists the members' specs and the shifts. Its safetensors file is DIR/ensemble.safetensors.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import tempfile
import typing
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write_bytes
from .data import MnistData
from .ensemble import EnsembleModel
from .errors import MnistCnnError
from .inputs import as_model_input
from .keras_io import load_keras, write_keras
from .models import SpecModel
from .runs import ENSEMBLE_FILE, is_run_file, load_weights, run_data, save_weights
from .sources import ModelSource, Openable, open_model

FORMATS = ("onnx", "torchscript", "safetensors", "keras")
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript",
            ".safetensors": "safetensors", ".keras": "keras"}
ONNX_OPSET = 18  # the torch.export-based exporter's native opset; onnxruntime >= 1.14 runs it


class _WithProbabilities(nn.Module):
    """Wraps a model so the ONNX graph returns softmax probabilities next to the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image)
        return logits, torch.softmax(logits, dim=1)


def _resolve(source: Openable) -> tuple[SpecModel | EnsembleModel, dict[str, Any], ModelSource]:
    """The model (a CPU, eval-mode copy), its identity metadata, and the source it was opened as."""
    opened = open_model(source)
    model = opened.model
    if not isinstance(model, (SpecModel, EnsembleModel)):
        raise MnistCnnError(f"cannot export {type(model).__name__}: expected a run or ensemble (its directory, "
                            "a Run or an EnsembleRun), a SpecModel or an EnsembleModel")
    # "spec" is the architecture; an ensemble's is its members' specs, TTA shifts and how they combine
    meta: dict[str, Any] = {"name": model.name, "spec": model.describe()}
    if opened.path is not None:
        meta.update(run=opened.path.name, test_accuracy=opened.metrics.get("accuracy"))
    classes = opened.classes
    if classes:  # the name of each output, for runs whose classes are not the digits
        meta["classes"] = list(classes)
    return copy.deepcopy(model).cpu().eval(), meta, opened  # a copy: the caller's model keeps its device and mode


def format_for(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The export format: `fmt` if given, else from the file suffix; the two must not disagree."""
    told = SUFFIXES.get(Path(path).suffix.lower())
    if fmt is not None and fmt not in FORMATS:
        raise MnistCnnError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt is not None and told not in (None, fmt):  # a TorchScript file named .onnx would fail whoever loads it
        raise MnistCnnError(f"--format {fmt}, but the suffix of {path} says {told}: change one of them")
    if fmt is None and told is None:
        raise MnistCnnError(f"cannot tell the format of {path} from its suffix: use --format "
                            f"{'|'.join(FORMATS)} or one of {', '.join(SUFFIXES)}")
    return fmt or typing.cast(str, told)


def export_model(run_or_model: Openable, fmt: str | None, out_path: str | os.PathLike) -> Path:
    """Write the model in `fmt` ('onnx', 'torchscript', 'safetensors', 'keras'; None = from the suffix)
    to `out_path` atomically, and return the path. See the module docstring for loading."""
    out = Path(out_path)
    fmt = format_for(out, fmt)
    model, meta, opened = _resolve(run_or_model)
    run = opened.path
    if run is not None and is_run_file(run, out):
        raise MnistCnnError(f"{out} is one of the exported run's own files; export to another path")
    if fmt == "safetensors" and isinstance(model, EnsembleModel):  # save_weights holds one model
        where = (f"{run / ENSEMBLE_FILE} already holds it" if run is not None
                 else "mnist_cnn.ensemble.save_ensemble writes it")
        raise MnistCnnError(f"an ensemble's safetensors file is its own: {where}; export it as .onnx or .pt")
    if fmt == "keras":  # a Keras 3 .keras zip (mnist_cnn.keras_io); keras.saving.load_model opens it
        return write_keras(model, out)
    if fmt == "safetensors":
        # The run's own weights format (checksummed; spec in metadata), so load_run() reads it back.
        return save_weights(out, typing.cast(SpecModel, model), {k: v for k, v in meta.items() if k != "spec"})
    data = _onnx_bytes(model, meta) if fmt == "onnx" else _torchscript_bytes(model, meta)
    return atomic_write_bytes(out, data)


def _onnx_bytes(model: SpecModel | EnsembleModel, meta: dict[str, Any]) -> bytes:
    try:
        import onnx
    except ImportError as e:
        raise MnistCnnError("ONNX export needs the 'export' extra: pip install 'mnist-cnn[export]'") from e
    example = torch.zeros(2, 1, 28, 28)  # batch 2, so the exporter cannot specialise the batch to 1
    batch = torch.export.Dim("batch")
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (torchvision ops absent, deprecations)
        exporter_log.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                _WithProbabilities(model).eval(), (example,), dynamo=True, verbose=False,
                input_names=["image"], output_names=["logits", "probabilities"],
                dynamic_shapes={"image": {0: batch}}, opset_version=ONNX_OPSET)
        except ImportError as e:  # the exporter needs onnxscript
            raise MnistCnnError(f"ONNX export needs onnxscript ({e}): pip install 'mnist-cnn[export]'") from e
        finally:
            exporter_log.setLevel(level)
        assert program is not None  # dynamo=True always returns the program
        program.save(os.path.join(tmp, "model.onnx"), external_data=False)
        proto = onnx.load(os.path.join(tmp, "model.onnx"))
    proto.doc_string = f"mnist-cnn {meta['name']}: image float32 [N,1,28,28] in [0,1] -> logits, probabilities"
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value) if not isinstance(value, str) else value
    return proto.SerializeToString()


def _torchscript_bytes(model: SpecModel | EnsembleModel, meta: dict[str, Any]) -> bytes:
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but TorchScript is still what
        # C++ (libtorch) and older runtimes load; the warning would only confuse users.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # an ensemble's shift check sees the fixed 28x28
        traced = torch.jit.trace(model, torch.zeros(2, 1, 28, 28), check_trace=False)
        buf = io.BytesIO()
        names = {"classes.json": json.dumps(meta["classes"])} if "classes" in meta else {}
        torch.jit.save(traced, buf, _extra_files={"spec.json": json.dumps(meta["spec"]),
                                                  "meta.json": json.dumps(meta), **names})
    return buf.getvalue()


def run_exported(path: str | os.PathLike, x: Any, fmt: str | None = None) -> np.ndarray:
    """Logits [N, 10] from an exported file, run by its own runtime (onnxruntime for ONNX)."""
    path = Path(path)
    fmt = format_for(path, fmt)
    xf = as_model_input(x)
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise MnistCnnError("checking ONNX needs onnxruntime: pip install 'mnist-cnn[export]'") from e
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["logits"], {"image": xf.numpy()})[0]
    with torch.inference_mode():
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu").eval()
        else:
            module = load_weights(path) if fmt == "safetensors" else load_keras(path)
        return module(xf).float().numpy()


def check_parity(run: Openable, path: str | os.PathLike, x: Any, fmt: str | None = None) -> float:
    """Max absolute difference between the exported file's logits and PyTorch's on images x."""
    model, _, _ = _resolve(run)
    with torch.inference_mode():
        expected = model(as_model_input(x, size=model.input_size)).float().numpy()
    got = run_exported(path, x, fmt)
    if got.shape != expected.shape:
        raise MnistCnnError(f"{path}: output shape {got.shape} differs from PyTorch's {expected.shape}")
    for outputs, where in ((expected, "the PyTorch model's"), (got, f"the exported {path}'s")):
        if not np.isfinite(outputs).all():  # a nan difference compares false with every tolerance: never a pass
            raise MnistCnnError(f"{where} outputs hold NaN or infinite values on the check images; not exported")
    return float(np.abs(got - expected).max()) if expected.size else 0.0


PARITY_IMAGES = 1000  # test images an export is checked on


def export_checked(source: Openable, out_path: str | os.PathLike, fmt: str | None = None, *,
                   data: str | os.PathLike | MnistData | None = None) -> tuple[Path, float, int]:
    """`export_model`, then `check_parity` on the first PARITY_IMAGES test images of the data the model was trained
    on (or of `data`): returns (the file, the max absolute difference of the logits, how many images)."""
    opened = open_model(source)
    fmt = format_for(out_path, fmt)
    path = export_model(opened, fmt, out_path)
    test = data if isinstance(data, MnistData) else run_data(opened, data)
    images = test.x_test[:PARITY_IMAGES]
    return path, check_parity(opened, path, images, fmt), len(images)
