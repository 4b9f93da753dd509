"""Synthetic hand-drawn glyphs for the data-set tests: a dozen shapes made of strokes, with jitter."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from mnist_cnn.preprocess import preprocess_array

# Each glyph: strokes (polylines) in the unit square, y downwards; "O" is an ellipse's box.
SHAPES: dict[str, list[list[tuple[float, float]]]] = {
    "bar": [[(0.5, 0.15), (0.5, 0.85)]],
    "dash": [[(0.15, 0.5), (0.85, 0.5)]],
    "L": [[(0.3, 0.15), (0.3, 0.85), (0.75, 0.85)]],
    "seven": [[(0.25, 0.15), (0.7, 0.15), (0.7, 0.85)]],
    "T": [[(0.15, 0.15), (0.85, 0.15)], [(0.5, 0.15), (0.5, 0.85)]],
    "plus": [[(0.5, 0.15), (0.5, 0.85)], [(0.15, 0.5), (0.85, 0.5)]],
    "X": [[(0.15, 0.15), (0.85, 0.85)], [(0.85, 0.15), (0.15, 0.85)]],
    "O": [[(0.2, 0.15), (0.8, 0.85)]],
    "square": [[(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8), (0.2, 0.2)]],
    "triangle": [[(0.5, 0.15), (0.85, 0.85), (0.15, 0.85), (0.5, 0.15)]],
    "V": [[(0.15, 0.15), (0.5, 0.85), (0.85, 0.15)]],
    "equals": [[(0.15, 0.35), (0.85, 0.35)], [(0.15, 0.65), (0.85, 0.65)]],
}


def drawing(name: str, rng: np.random.Generator | None = None, size: int = 112, dark_on_light: bool = False
            ) -> Image.Image:
    """The glyph `name` drawn as a person would: upright, strokes ~1/10 of the size, jittered by `rng`."""
    ink, paper = (20, 235) if dark_on_light else (255, 0)
    im = Image.new("L", (size, size), paper)
    draw = ImageDraw.Draw(im)
    width = size // 10 if rng is None else int(rng.integers(size // 14, size // 8))

    def at(x: float, y: float) -> tuple[float, float]:
        dx, dy = (0.0, 0.0) if rng is None else rng.uniform(-0.05, 0.05, 2)
        return (x + dx) * size, (y + dy) * size

    for stroke in SHAPES[name]:
        points = [at(x, y) for x, y in stroke]
        if name == "O":
            (x0, y0), (x1, y1) = points
            draw.ellipse([x0, y0, x1, y1], outline=ink, width=width)
        else:
            draw.line(points, fill=ink, width=width, joint="curve")
    return im


def mnist_form(names: list[str], per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` jittered drawings of each glyph made 28x28 as MNIST was (upright), and their labels (the index
    in `names`), interleaved."""
    rng = np.random.default_rng(seed)
    images = [preprocess_array(np.asarray(drawing(n, rng))) for _ in range(per_class) for n in names]
    labels = [i for _ in range(per_class) for i in range(len(names))]
    return np.stack(images), np.array(labels, np.uint8)
