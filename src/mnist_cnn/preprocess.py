"""User images -> MNIST-like 28x28 uint8 arrays, following the recipe MNIST itself was made with.

MNIST digits are white ink on black, scaled (keeping the aspect ratio, anti-aliased) so that the
longer side of the ink's bounding box is 20 px, then pasted into 28x28 so that the centre of mass
of the ink lies at pixel (14, 14). A photo or drawing that skips any of these steps is what makes
a good MNIST model "get my handwriting wrong". Pillow decodes; everything after that is numpy.

An image already in MNIST form passes through unchanged (99.7% of the MNIST test set to within
one grey level), so predicting on MNIST digits saved as PNGs gives the model's MNIST accuracy.
"""

from __future__ import annotations

import io
import os
import typing
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeGuard, Union

import numpy as np

from .errors import MnistCnnError

if TYPE_CHECKING:  # Pillow is imported lazily: only image paths need it
    from PIL import Image

ImageSource = Union[str, "os.PathLike[str]", bytes, "Image.Image"]  # a path, encoded bytes, or a Pillow image

#: Images with more pixels than this are refused from their header, before any decoding:
#: 25 Mpx covers phone photos; decoding one costs up to ~100 MB (RGBA) for a moment.
MAX_PIXELS = 25_000_000
#: Decoded images larger than this (longest side, px) are box-averaged down before the numpy steps.
WORK_SIDE = 1024
#: Formats we decode. A closed list keeps Pillow's riskier plugins (EPS runs Ghostscript) away.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
#: The file names taken for images when a folder is given (predict's folders, image-folder data sets).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")

BOX = 20  # the longer side of the ink box after fitting, as in MNIST
SIZE = 28  # output side
CENTRE = 14.0  # MNIST's mean centre of mass, in pixel-index coordinates (measured: 13.99, 14.01)
INK_THRESHOLD = 50.0  # of 255 after contrast stretch: MNIST's 20 px box survives it in 99.9% of digits
MIN_CONTRAST = 24.0  # ink brighter than the background by less than this (of 255) = blank image


class ImageError(MnistCnnError):
    """An image that cannot be used; `code` says why in a machine-readable word (used by serve)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message.replace("\n", " "))  # one line, whatever a decoder said
        self.code = code


def image_name(source: ImageSource, name: str | None = None) -> str:
    """What messages and results call an image: its path, or what it is when it has none."""
    if name:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<uploaded bytes>"
    if is_pil_image(source):
        return f"<{source.width}x{source.height} {source.mode} image>"
    return str(source)


def is_pil_image(source: object) -> TypeGuard[Image.Image]:
    """A Pillow image, without importing Pillow for the paths and bytes that are the common case."""
    return type(source).__module__.startswith("PIL.")


def decode_image(source: ImageSource, *, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode any supported image to a float32 grayscale array [H, W] in 0..255 (EXIF-rotated,
    alpha composited onto a background that contrasts with the visible ink)."""
    label = image_name(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(source)), label, max_pixels)
    if is_pil_image(source):  # already decoded, in the caller's memory: no header to distrust
        return _pixels(source, label)
    try:
        with open(Path(typing.cast("str | os.PathLike[str]", source)), "rb") as f:
            return _decode(f, label, max_pixels)
    except ImageError:
        raise
    except OSError as e:
        raise ImageError(f"{label}: cannot read file ({e.strerror or e})", "unreadable") from e


def decoded_size(data: bytes, *, name: str | None = None, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) that decoding `data` would produce (a large JPEG at libjpeg's reduced scale), read from
    the header alone: lets a caller budget the pixels of several images before decoding any."""
    with _open(io.BytesIO(bytes(data)), image_name(data, name), max_pixels) as im:
        return im.size


def _decode(fp: IO[bytes], label: str, max_pixels: int) -> np.ndarray:
    """Pillow's own warnings (a TIFF's corrupt EXIF, a truncated read, each printed with Pillow's install path) are
    caught: dropped when the image decodes, and the first folded into the one-line error when it does not."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _decode_quietly(fp, label, max_pixels)
        except ImageError as e:
            said = [str(w.message).splitlines()[0] for w in caught if str(w.message).strip()]
            if not said:
                raise
            raise ImageError(f"{e} (Pillow warned: {said[0]})", e.code) from e


def _decode_quietly(fp: IO[bytes], label: str, max_pixels: int) -> np.ndarray:
    from PIL import ImageOps

    im = _open(fp, label, max_pixels)
    try:
        im.load()
        im = ImageOps.exif_transpose(im)
    except Exception as e:  # damaged data can make Pillow's decoders raise any type (TypeError for a bad TIFF tag)
        raise ImageError(f"{label}: truncated or corrupt image data ({e})", "truncated_image") from e
    return _pixels(im, label)


def _open(fp: IO[bytes], label: str, max_pixels: int) -> Image.Image:
    """The image's header, opened lazily; refused when the size to decode is over `max_pixels`."""
    from PIL import Image, UnidentifiedImageError

    limit = f"over {max_pixels:,} pixels; refused before decoding"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit is checked below
        try:
            im = Image.open(fp, formats=FORMATS)  # reads the header only
        except Image.DecompressionBombError as e:
            raise ImageError(f"{label}: image dimensions too large ({limit})", "image_too_large") from e
        except UnidentifiedImageError as e:
            raise ImageError(f"{label}: not an image (expected PNG, JPEG, GIF, BMP, TIFF, WebP or PPM)",
                             "not_an_image") from e
        except Exception as e:  # a damaged header can make Pillow raise almost anything
            raise ImageError(f"{label}: not a readable image ({e})", "not_an_image") from e
    w, h = im.size
    try:
        if im.format == "JPEG" and max(w, h) > 2 * WORK_SIDE:
            im.draft(None, (WORK_SIDE, WORK_SIDE))  # libjpeg decodes at 1/2..1/8 scale: a phone photo fits
    except Exception as e:
        raise ImageError(f"{label}: truncated or corrupt image data ({e})", "truncated_image") from e
    # The bomb check: the size to decode (after a JPEG's draft) decides the memory, so refuse here, before load().
    if im.size[0] * im.size[1] > max_pixels:
        raise ImageError(f"{label}: image dimensions too large ({w}x{h}, {limit})", "image_too_large")
    return im


def _pixels(im: Image.Image, label: str) -> np.ndarray:
    try:
        return np.asarray(_shrink(_gray_image(im)), dtype=np.float32)
    except ValueError as e:  # a mode Pillow cannot convert to grayscale, such as LAB
        raise ImageError(f"{label}: unsupported image mode {im.mode} ({e})", "not_an_image") from e


def _gray_image(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> "L" (or "F" for wide modes); alpha composited onto a contrasting background."""
    from PIL import Image

    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        # Wide modes: rescale to 0..255 by the type's range (16-bit) or the data's range.
        a = np.asarray(im, dtype=np.float32)
        top = 65535.0 if mode.startswith("I;16") else max(float(a.max()), 1.0)
        return Image.fromarray(np.clip(a * (255.0 / top), 0, 255).astype(np.float32), mode="F")
    if not (mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info):
        return im.convert("L")
    rgba = im.convert("RGBA")
    # A transparent canvas with dark strokes must land on white, with light strokes on black:
    # the alpha-weighted mean colour decides (a reduced copy is plenty for that vote).
    small = rgba.reduce(max(1, max(rgba.size) // 256))
    lum = np.asarray(small.convert("L"), dtype=np.float32)
    alpha = np.asarray(small.getchannel("A"), dtype=np.float32)
    ink_mean = float((lum * alpha).sum() / alpha.sum()) if alpha.sum() > 0 else 0.0
    level = 255 if ink_mean < 127.5 else 0
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (level, level, level, 255)), rgba).convert("L")


def _shrink(g: Image.Image) -> Image.Image:
    """Box-average a large image down to at most WORK_SIDE px: the digit ends up 20 px tall anyway,
    and the float pipeline then costs a few MB however big the photo."""
    side = max(g.size)
    return g.reduce(-(-side // WORK_SIDE)) if side > WORK_SIDE else g


def preprocess_array(a: np.ndarray, *, name: str = "image") -> np.ndarray:
    """A grayscale array [H, W] (uint8 0..255, or float in 0..1 or 0..255), any polarity ->
    uint8 [28, 28], white ink on black, ink fitted into 20x20, centre of mass at (14, 14)."""
    g = np.asarray(a)
    if g.ndim == 3 and g.shape[-1] in (3, 4):  # colour arrays: ITU-R 601 luma, like Pillow's "L"
        g = g[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if g.ndim != 2 or min(g.shape) < 1:
        raise ImageError(f"{name}: expected a 2-D grayscale array, got shape {tuple(np.shape(a))}", "bad_shape")
    kind = g.dtype.kind
    g = g.astype(np.float32)
    if not np.isfinite(g).all():
        raise ImageError(f"{name}: array contains NaN or infinity", "out_of_range")
    if kind in "fb" and g.max() <= 1.0:
        g = g * 255.0  # floats in 0..1 are the model's scale; bring them to 0..255
    g = np.clip(g, 0.0, 255.0)

    # 1. Polarity: the border is background; a light border means dark ink, so invert.
    ring = max(1, min(g.shape) // 50)
    border = np.concatenate([g[:ring].ravel(), g[-ring:].ravel(), g[:, :ring].ravel(), g[:, -ring:].ravel()])
    background = float(np.median(border))
    if background > 127.5:
        g = 255.0 - g
        background = 255.0 - background

    # 2. Contrast: background -> 0, brightest ink -> 255 (grey paper and pencil become MNIST-black/white).
    peak = float(g.max())
    if peak - background < MIN_CONTRAST:
        raise ImageError(f"{name}: image is blank (no ink found against the background)", "blank_image")
    g = np.clip((g - background) * (255.0 / (peak - background)), 0.0, 255.0)

    # 3. Crop to the ink's bounding box.
    r0, r1, c0, c1 = _ink_box(g)
    crop = g[r0:r1, c0:c1]

    # 4. Fit the longer side to 20 px keeping the aspect ratio; anti-aliased (Lanczos) resampling.
    fitted = _fit(crop, BOX)

    # 5. Paste into 28x28 with the centre of mass at (14, 14): an integer shift, as MNIST did.
    return _paste_centred(fitted)


def _ink_box(g: np.ndarray, halo: int = 2) -> tuple[int, int, int, int]:
    """Bounding box (r0, r1, c0, c1), end-exclusive, of pixels above INK_THRESHOLD, grown by up to
    `halo` px over any fainter ink touching it: keeps anti-aliased edges, ignores distant noise."""
    rows = np.flatnonzero((g > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((g > INK_THRESHOLD).any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    faint = g > 0
    for _ in range(halo):
        r0 -= int(r0 > 0 and faint[r0 - 1, c0:c1].any())
        r1 += int(r1 < g.shape[0] and faint[r1, c0:c1].any())
        c0 -= int(c0 > 0 and faint[r0:r1, c0 - 1].any())
        c1 += int(c1 < g.shape[1] and faint[r0:r1, c1].any())
    return r0, r1, c0, c1


def _fit(crop: np.ndarray, box: int) -> np.ndarray:
    h, w = crop.shape
    scale = box / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):
        return crop  # already the right size: no resampling, so MNIST images pass unchanged
    from PIL import Image

    resized = Image.fromarray(np.ascontiguousarray(crop, dtype=np.float32), mode="F").resize(
        (nw, nh), Image.Resampling.LANCZOS)
    out = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 255.0)
    # Resampling blurs thin strokes below full white; MNIST's ink always peaks at 254-255.
    return out * (255.0 / max(float(out.max()), 1e-6))


def _paste_centred(fitted: np.ndarray) -> np.ndarray:
    h, w = fitted.shape
    total = float(fitted.sum())
    cy = float((fitted.sum(axis=1) * np.arange(h)).sum() / total)
    cx = float((fitted.sum(axis=0) * np.arange(w)).sum() / total)
    # Clamp so the whole digit stays inside (a lopsided digit keeps its ink rather than wrapping).
    top = int(np.clip(round(CENTRE - cy), 0, SIZE - h))
    left = int(np.clip(round(CENTRE - cx), 0, SIZE - w))
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    out[top : top + h, left : left + w] = fitted
    return np.rint(out).astype(np.uint8)


def load_image(source: ImageSource, *, name: str | None = None, max_pixels: int = MAX_PIXELS,
               raw: bool = False) -> np.ndarray:
    """Path or encoded bytes (PNG/JPEG/GIF/BMP/TIFF/WebP/PPM) -> MNIST-like uint8 [28, 28]; with `raw`, a 28x28
    image's grey levels as they are (for a set that is not white digits on black, such as an inverted one).

    Raises ImageError (a MnistCnnError) naming the file for: unreadable file, not an image,
    too many pixels (checked from the header, before decoding), truncated data, blank image, raw and not 28x28.
    """
    label = image_name(source, name)
    gray = decode_image(source, name=label, max_pixels=max_pixels)
    if not raw:
        return preprocess_array(gray, name=label)
    if gray.shape != (28, 28):
        raise ImageError(f"{label}: is {gray.shape[1]}x{gray.shape[0]}; a raw image must be 28x28", "wrong_size")
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def center_of_mass(img: np.ndarray) -> tuple[float, float]:
    """(row, col) centre of mass of a 2-D image's intensities; used by tests and checks."""
    g = np.asarray(img, dtype=np.float64)
    total = g.sum()
    ys, xs = np.indices(g.shape)
    return float((g * ys).sum() / total), float((g * xs).sum() / total)
