"""Random affine augmentation (rotation, shift, shear, zoom) of a whole image batch in one grid-sample.

Pure functions over a batch on the data's device, in the style of airbench. The random ranges
follow Keras' `ImageDataGenerator` (rotation_range, width/height_shift_range, shear_range,
zoom_range) and the matrix is the one of Keras' `apply_affine_transform`; the fill is the constant 0
of the MNIST background. Typical use in a training loop:

    g = torch.Generator(device=x.device).manual_seed(seed)
    x_aug = random_affine(x_batch, Augment(rotation=10, zoom=0.1), g)   # labels stay as they are
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import MnistCnnError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# field -> (largest allowed value, whether it is allowed itself, what the value means)
_LIMITS: dict[str, tuple[float, bool, str]] = {
    "rotation": (180.0, True, "an angle in degrees"),
    "width_shift": (1.0, False, "a fraction of the image width"),
    "height_shift": (1.0, False, "a fraction of the image height"),
    "shear": (90.0, False, "a shear angle in degrees"),  # at 90 degrees the shear matrix is singular
    "zoom": (1.0, False, "z for zoom factors in [1-z, 1+z]"),  # at 1 a zoom factor can reach 0
}


@dataclass(frozen=True)
class Augment:
    """Ranges of the random affine transform; every parameter is drawn per image, uniformly in [-r, r]."""

    rotation: float = 0.0  # degrees; positive = counter-clockwise as seen on screen (Keras)
    width_shift: float = 0.0  # fraction of W; positive moves the digit right
    height_shift: float = 0.0  # fraction of H; positive moves the digit down
    shear: float = 0.0  # Keras shear_range: a shear ANGLE in degrees, not a slope
    zoom: float = 0.0  # Keras zoom_range=z: zx, zy ~ U[1-z, 1+z] independently; >1 shrinks the digit

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            high, closed, meaning = _LIMITS[f.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MnistCnnError(f"augment {f.name}={value!r}: expected a number ({meaning})")
            value = float(value)
            if not (0.0 <= value <= high if closed else 0.0 <= value < high):  # NaN fails both
                bound = f"[0, {high:g}]" if closed else f"[0, {high:g})"
                raise MnistCnnError(f"augment {f.name}={value!r}: expected {meaning} in {bound}")
            object.__setattr__(self, f.name, value)  # ints become floats so equality/to_dict are stable

    @property
    def is_identity(self) -> bool:
        return all(getattr(self, f.name) == 0.0 for f in fields(self))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Augment:
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise MnistCnnError(f"augment: expected a table of {sorted(_LIMITS)}, got {d!r}")
        unknown = sorted(set(d) - set(_LIMITS))
        if unknown:
            raise MnistCnnError(f"augment: unknown option(s) {unknown}; expected some of {sorted(_LIMITS)}")
        return cls(**d)


def affine_from_params(
    angle: Tensor, dx: Tensor, dy: Tensor, shear: Tensor, zx: Tensor, zy: Tensor, size: tuple[int, int]
) -> Tensor:
    """[N] parameters (degrees, pixels, degrees, factors) -> [N,2,3] `affine_grid` matrices for (H, W) = size.

    The sampling map (output pixel -> input pixel, about the image centre) is Keras' R @ T @ Sh @ Z with
    R = [[cos, -sin], [sin, cos]], T = shift by (-dx, -dy), Sh = [[1, -sin(shear)], [0, cos(shear)]],
    Z = diag(zx, zy), in (x right, y down) pixel coordinates.
    """
    h, w = size
    a, s = torch.deg2rad(angle), torch.deg2rad(shear)
    cos, sin, cos_as, sin_as = torch.cos(a), torch.sin(a), torch.cos(a + s), torch.sin(a + s)
    # R @ Sh collapses to [[cos a, -sin(a+s)], [sin a, cos(a+s)]]; Z then scales its columns
    a00, a01, a10, a11 = cos * zx, -sin_as * zy, sin * zx, cos_as * zy
    bx, by = -(cos * dx - sin * dy), -(sin * dx + cos * dy)  # R @ (-dx, -dy): Keras shifts before rotating
    # pixels -> affine_grid's [-1, 1] coordinates (align_corners=False: centre of the image at 0, 2/W per pixel)
    row0 = torch.stack([a00, a01 * (h / w), bx * (2.0 / w)], dim=-1)
    row1 = torch.stack([a10 * (w / h), a11, by * (2.0 / h)], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def affine_matrices(
    n: int,
    aug: Augment,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    size: tuple[int, int] = (28, 28),
) -> Tensor:
    """n random [2,3] matrices (float32) drawn from `generator`, which must live on `device`."""
    device = torch.device(device) if device is not None else generator.device
    # always draw 6 numbers per image so the stream does not depend on which ranges are zero
    u = torch.rand(n, 6, generator=generator, device=device) * 2.0 - 1.0  # U[-1, 1)
    h, w = size
    return affine_from_params(
        angle=u[:, 0] * aug.rotation,
        dx=u[:, 1] * aug.width_shift * w,
        dy=u[:, 2] * aug.height_shift * h,
        shear=u[:, 3] * aug.shear,
        zx=1.0 + u[:, 4] * aug.zoom,
        zy=1.0 + u[:, 5] * aug.zoom,
        size=(h, w),
    )


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise MnistCnnError(f"augment: expected images [N,C,H,W], got {getattr(x, 'shape', type(x))}")
    if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
        raise MnistCnnError(f"augment: expected uint8 or float images, got {x.dtype}")


def affine_grid(theta: Tensor, size: tuple[int, int]) -> Tensor:
    """F.affine_grid(theta, [N, C, H, W], align_corners=False) as two broadcast products: 2-4x faster on the
    CPU than its batched matmul with an inner dimension of 3 (benchmarks/speed_ladder.py --data-ops)."""
    h, w = size

    def centres(n: int) -> Tensor:  # pixel centres in [-1, 1]
        return torch.arange(n, dtype=theta.dtype, device=theta.device).mul_(2 / n).add_(1 / n - 1)

    along_x = theta[:, :, 0, None] * centres(w)  # [N, 2, W]
    along_y = torch.addcmul(theta[:, :, 2, None], theta[:, :, 1, None], centres(h))  # [N, 2, H]
    return (along_x[:, :, None, :] + along_y[:, :, :, None]).permute(0, 2, 3, 1)  # [N, H, W, 2], a view


def apply_affine(x: Tensor, theta: Tensor, mode: str = "bilinear") -> Tensor:
    """Resample every image of x [N,C,H,W] with its own matrix theta [N,2,3]; outside = 0; dtype kept."""
    _check_images(x)
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()  # uint8/half: sample in float32
    grid = affine_grid(theta.to(work.dtype), (work.shape[-2], work.shape[-1]))
    out = F.grid_sample(work, grid, mode=mode, padding_mode="zeros", align_corners=False)  # fill 0 = MNIST bg
    if x.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)  # round, not floor, so identity-ish maps stay exact
    return out.to(x.dtype)


def random_affine(x: Tensor, aug: Augment, generator: torch.Generator, mode: str = "bilinear") -> Tensor:
    """A fresh random transform per image of x [N,C,H,W] (float or uint8); the batch order is kept."""
    _check_images(x)
    if aug.is_identity:
        return x  # nothing to draw: the very same tensor, bit for bit
    if generator.device.type != x.device.type:
        raise MnistCnnError(f"augment: generator on {generator.device} but images on {x.device}")
    theta = affine_matrices(x.shape[0], aug, generator, x.device, size=(x.shape[-2], x.shape[-1]))
    return apply_affine(x, theta, mode=mode)


def plot_augmented(x: Tensor, aug: Augment | Mapping[str, float], path: str | os.PathLike | None = None, *,
                   seed: int = 0, n: int = 8) -> Figure:
    """n originals (top row) above three augmented draws of each, as a Figure (also written to `path` if given)."""
    from .display import figure, finish

    aug = aug if isinstance(aug, Augment) else Augment.from_dict(dict(aug))
    x = (x[:n, None] if x.ndim == 3 else x[:n]).cpu()  # accept [N,28,28] uint8 as stored by data.py
    g = torch.Generator().manual_seed(seed)
    rows = [x] + [random_affine(x, aug, g) for _ in range(3)]
    fig = figure(x.shape[0], len(rows))
    for r, batch in enumerate(rows):
        for c in range(batch.shape[0]):
            ax = fig.add_subplot(len(rows), batch.shape[0], r * batch.shape[0] + c + 1)
            ax.imshow(batch[c, 0].float().numpy(), cmap="gray", vmin=0, vmax=255 if x.dtype == torch.uint8 else 1)
            ax.set_axis_off()
    return finish(fig, path)
