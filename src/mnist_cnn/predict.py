"""Predict digits on images: arrays already in MNIST form, or image files of any size and polarity.

`mnist-cnn predict RUN_DIR IMAGE...` is `predict_files` + `format_predictions` (or JSON of the list); an
ensemble's directory works wherever a run's does.
"""

from __future__ import annotations

import io
import os
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write_bytes
from .budgets import is_dir
from .errors import MnistCnnError
from .evaluation import predict_logits
from .inputs import InputError, as_model_input
from .preprocess import IMAGE_SUFFIXES, ImageError, ImageSource, image_name, is_pil_image, load_image
from .sources import Openable, open_model


def predict_proba(model: nn.Module, x: Any) -> np.ndarray:
    """Softmax probabilities [N, 10] for images x (any form `inputs.as_model_input` accepts), in eval mode."""
    probabilities = torch.softmax(predict_logits(model, x), dim=1).cpu().numpy()
    if not np.isfinite(probabilities).all():  # JSON would show them as null: name the model instead
        raise MnistCnnError(f"the model {getattr(model, 'name', type(model).__name__)} gave NaN or infinite scores "
                            "for these images (its weights hold NaN or overflow)")
    return probabilities


def describe(probabilities: np.ndarray, k: int = 3, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """One image's probabilities -> digit (the class index), its probability, the top k, and all of them (as
    floats); with class names (`classes`), each index comes with its `label`."""
    order = np.argsort(-probabilities, kind="stable")[:k]

    def named(d: int) -> dict[str, Any]:
        return {"digit": int(d), "label": classes[d]} if classes else {"digit": int(d)}

    return {**named(order[0]), "probability": float(probabilities[order[0]]),
            "top3": [{**named(d), "probability": float(probabilities[d])} for d in order],
            "probabilities": [float(p) for p in probabilities]}


def predict_arrays(run: Openable, images: Any) -> list[dict[str, Any]]:
    """Predictions for MNIST-form images (no preprocessing is applied), in any form `inputs.as_model_input` accepts:
    [N, 28, 28], [28, 28], [N, 1, 28, 28] or [N, 28, 28, 1]; integers 0..255 or floats in [0, 1]. For a photo or
    drawing of any size, use predict_files."""
    opened = open_model(run)
    model, classes = opened.model, opened.classes
    try:
        x = as_model_input(images, name="images", size=getattr(model, "input_size", None) or (28, 28))
    except InputError as e:
        hint = "; for a photo or drawing of any size, use predict_files" if e.problem == "shape" else ""
        raise InputError(e.problem, f"{e}{hint}") from None
    return [describe(p, classes=classes) for p in predict_proba(model, x)]


def png_bytes(image: np.ndarray) -> bytes:
    """A 28x28 uint8 array as an 8-bit grayscale PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _unique_name(path: Path, taken: set[str]) -> str:
    stem, n = re.sub(r"[^\w.-]+", "-", path.stem).strip("-") or "image", 1  # "<uploaded bytes>" -> uploaded-bytes
    name = f"{stem}.png"
    while name in taken:  # a/1.png and b/1.png must not overwrite each other
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    return name


def image_files(paths: Sequence[ImageSource]) -> list[ImageSource]:
    """The images as given, with each folder replaced by its image files (by suffix, sorted, not its subfolders)."""
    files: list[ImageSource] = []
    for path in paths:
        if not isinstance(path, (str, os.PathLike)) or not is_dir(path):  # bytes and images pass as they are
            files.append(path)
            continue
        found = sorted(f for f in Path(path).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not found:
            raise MnistCnnError(f"{path}: no image files in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
        files += found
    return files


def predict_files(run: Openable, paths: ImageSource | Sequence[ImageSource],
                  show_preprocessed_dir: str | os.PathLike | None = None, *, raw: bool = False,
                  skip_unreadable: bool = False) -> list[dict[str, Any]]:
    """Preprocess each image (a file's path, a folder: its image files; encoded bytes; a Pillow image) the MNIST way
    and predict it. Returns one dict per image: file (its path, or what it is), digit, label (named classes only),
    probability, top3 [{digit, label, probability}], probabilities, and `preprocessed` (where
    the 28x28 input was written, when `show_preprocessed_dir` is given). `raw`: 28x28 images are fed as they are,
    without the MNIST preparation (see `preprocess.load_image`). A file that is not a usable image raises
    ImageError naming it, or with `skip_unreadable` gives {file, error} and the other files are still predicted."""
    one = isinstance(paths, (str, os.PathLike, bytes)) or is_pil_image(paths)  # one image, not its characters
    paths = image_files([typing.cast(ImageSource, paths)] if one else typing.cast(Sequence[ImageSource], paths))
    if not paths:
        raise MnistCnnError("no image files given")
    opened = open_model(run)
    model, classes = opened.model, opened.classes
    results, images = [], []
    for path in paths:
        try:
            images.append(load_image(path, raw=raw))
            results.append({"file": image_name(path)})
        except ImageError as e:
            if not skip_unreadable:
                raise
            results.append({"file": image_name(path), "error": str(e)})
    readable = [r for r in results if "error" not in r]
    if images:
        for result, prob in zip(readable, predict_proba(model, np.stack(images))):
            result.update(describe(prob, classes=classes))
    if show_preprocessed_dir is not None:
        out_dir = Path(show_preprocessed_dir)
        # the images given may live in that folder: their names are taken, so they are never written over
        taken = {Path(p).name for p in paths if isinstance(p, (str, os.PathLike))
                 and Path(p).resolve().parent == out_dir.resolve()}
        for result, image in zip(readable, images):
            target = out_dir / _unique_name(Path(result["file"]), taken)
            atomic_write_bytes(target, png_bytes(image))
            result["preprocessed"] = str(target)
    return results


def format_predictions(results: Sequence[dict[str, Any]]) -> str:
    """Text report, one line per image: `FILE  DIGIT (P%)  top-3: D P%, D P%, D P%` (or `error: ...`); a class's
    name where it has one."""
    width = max((len(str(r.get("file", ""))) for r in results), default=0)
    lines = []
    for r in results:
        if "error" in r:  # the message names the file
            lines.append(f"error: {r['error']}")
            continue
        top = ", ".join(f"{t.get('label', t['digit'])} {t['probability'] * 100:.1f}%" for t in r["top3"])
        line = (f"{str(r.get('file', '')):<{width}}  {r.get('label', r['digit'])} ({r['probability'] * 100:.1f}%)  "
                f"top-3: {top}")
        if "preprocessed" in r:
            line += f"  [model input: {r['preprocessed']}]"
        lines.append(line)
    return "\n".join(lines)
