"""What counts as model input: the one rule that evaluate, predict, explain, export, serve and every
model's predict_proba go through.

    x = as_model_input(images)      # -> float32 [N, 1, H, W] in [0, 1]
    y = as_labels(labels, 10)       # -> int64 [N]

Images: NCHW [N, 1, H, W], NHWC [N, H, W, 1] (Keras), [N, H, W], or one image [H, W]; integers 0..255
(uint8 as MnistData holds them) or floats in [0, 1]; a numpy array, a torch tensor, a Pillow image or nested
lists. Anything else is refused with one line naming the parameter, never scored as other pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import MnistCnnError

LAYOUTS = "[N, 1, H, W], [N, H, W, 1], [N, H, W] or one image [H, W]"


class InputError(MnistCnnError):
    """Input that is not images (or labels): `problem` is "type", "shape", "dtype" or "range"."""

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem


def to_float(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images [N, H, W] -> float32 [N, 1, H, W] in [0, 1]: the cheap conversion of data as stored."""
    x = torch.as_tensor(x)
    if x.dtype != torch.uint8 or x.ndim != 3:
        raise InputError("dtype", f"to_float expects uint8 images [N, H, W], got {x.dtype} of shape {tuple(x.shape)}")
    return x.unsqueeze(1).to(torch.float32).div_(255.0)


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if type(x).__module__.startswith("PIL."):  # a Pillow image, without importing Pillow for everyone else
        x = np.asarray(x if x.mode == "L" else x.convert("L"))
    try:
        a = np.asarray(x)
    except (ValueError, RecursionError):  # ragged nested lists
        raise InputError("shape", f"{name} is not a rectangular array: expected images {LAYOUTS}") from None
    if a.dtype.kind not in "iuf":  # strings, booleans, objects, None
        raise InputError("dtype", f"{name} has dtype {a.dtype}: expected integers 0..255 or floats in [0, 1]")
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())  # a Pillow image's array is read-only


def _nchw(x: torch.Tensor, name: str, size: tuple[int, int] | None) -> torch.Tensor:
    """The images as [N, 1, H, W] (a view where it can be)."""
    given = list(x.shape)
    if x.ndim == 4 and x.shape[1] != 1 and x.shape[3] == 1:  # Keras's NHWC
        x = x.permute(0, 3, 1, 2)
    elif x.ndim in (2, 3):
        x = x.reshape(-1, 1, *x.shape[-2:])
    if x.ndim != 4 or x.shape[1] != 1 or (size is not None and tuple(x.shape[2:]) != size):
        hw = f"{size[0]}x{size[1]} " if size is not None else ""
        raise InputError("shape", f"{name} has shape {given}: expected {hw}images {LAYOUTS}")
    return x


def _exact(value: float) -> str:
    """Every digit a float has (1.0000000000000002 is not 1), without a whole number's '.0'."""
    return repr(value).removesuffix(".0")


def _check_range(x: torch.Tensor, name: str) -> None:
    low, high = (x.min().item(), x.max().item()) if x.numel() else (0.0, 0.0)  # NaN comes out as min and max
    if x.is_floating_point() and not (0 <= low and high <= 1):
        hint = ": divide 0..255 pixels by 255" if 1.5 < high <= 255 else " (above 1)" if 1 < high <= 1.5 else \
            " (below 0)" if -0.5 <= low < 0 else ""
        raise InputError("range", f"{name}: float images must be in [0, 1], got values in [{_exact(low)}, "
                                  f"{_exact(high)}]{hint}")
    if not x.is_floating_point() and not (0 <= low and high <= 255):
        raise InputError("range", f"{name}: integer images must be 0..255, got values in [{low:g}, {high:g}]")


def as_model_input(x: Any, *, name: str = "x", size: tuple[int, int] | None = None) -> torch.Tensor:
    """Images in any accepted form -> float32 [N, 1, H, W] in [0, 1], on x's device for a tensor.

    `size`: the (H, W) the model takes, when known; `name` is what error messages call x."""
    x = _as_tensor(x, name)
    if x.dtype == torch.bool or x.is_complex():
        raise InputError("dtype", f"{name} has dtype {x.dtype}: expected integers 0..255 or floats in [0, 1]")
    x = _nchw(x, name, size)
    if x.dtype != torch.uint8:  # uint8 is 0..255 by its type: no pass over the values
        _check_range(x, name)  # float64 is checked before float32 could round 1 + 1e-9 to 1
    if x.is_floating_point():
        return x.to(torch.float32).contiguous()
    return to_float(x.to(torch.uint8)[:, 0])


def as_labels(y: Any, num_classes: int | None = None, *, name: str = "y") -> torch.Tensor:
    """Class labels -> int64 [N]: integers [N], or one-hot rows [N, C] (C must be num_classes when given)."""
    y = _as_tensor(y, name)
    what = f"{y.dtype} of shape {tuple(y.shape)}"
    if y.ndim == 2 and (num_classes is None or y.shape[1] == num_classes) and y.dtype != torch.bool:
        if not ((y == 0) | (y == 1)).all() or not (y.sum(1) == 1).all():
            raise InputError("range", f"{name}: one-hot labels [N, C] must hold one 1 per row and 0 elsewhere, "
                                      f"got {what}")
        y = y.argmax(1)
    if y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool:
        classes = f"one-hot [N, {num_classes}]" if num_classes else "one-hot [N, C]"
        raise InputError("dtype", f"{name}: labels must be one integer per image [N] or {classes}, got {what}")
    if num_classes is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise InputError("range", f"{name}: labels must be 0..{num_classes - 1}, got values in "
                                  f"[{y.min().item()}, {y.max().item()}]")
    return y.long()
