"""The one input rule: what counts as images and labels for every model entry point (mnist_cnn.inputs)."""

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_cnn import MnistCnnError, as_labels, as_model_input
from mnist_cnn.inputs import to_float

PIXELS = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)  # two images, 0..255 repeating
EXPECTED = torch.from_numpy(PIXELS).float().div(255).unsqueeze(1)


@pytest.mark.parametrize("given", [
    PIXELS, PIXELS[:, None], PIXELS[..., None], torch.from_numpy(PIXELS), PIXELS.tolist(),
    PIXELS.astype(np.int64), PIXELS.astype(np.float64) / 255, torch.from_numpy(PIXELS)[:, None].float() / 255,
    (torch.from_numpy(PIXELS).float() / 255)[..., None]])
def test_every_accepted_form_gives_the_same_float32_nchw_batch(given):
    x = as_model_input(given)
    assert x.dtype == torch.float32 and x.shape == (2, 1, 28, 28)
    assert torch.allclose(x, EXPECTED, atol=1e-7)


def test_one_image_and_a_pillow_image_are_a_batch_of_one():
    assert torch.equal(as_model_input(PIXELS[0]), EXPECTED[:1])
    assert torch.equal(as_model_input(Image.fromarray(PIXELS[0], mode="L")), EXPECTED[:1])
    assert torch.equal(as_model_input(Image.fromarray(PIXELS[0], mode="L").convert("RGB")), EXPECTED[:1])


@pytest.mark.parametrize("bad, message", [
    (PIXELS.astype(np.float32), r"^pixels: float images must be in \[0, 1\], got values in \[0, 255\]: divide"),
    (np.full((28, 28), np.nan), r"^pixels: float images must be in \[0, 1\], got values in \[nan, nan\]$"),
    (np.full((28, 28), np.inf), r"^pixels: float images must be in \[0, 1\], got values in \[inf, inf\]$"),
    (np.full((28, 28), 1 + 1e-9), r"got values in \[1\.000000001, 1\.000000001\]"),  # float64, checked unrounded
    (np.full((28, 28), -3), r"^pixels: integer images must be 0\.\.255, got values in \[-3, -3\]$"),
    (np.zeros((2, 3, 28, 28)), r"^pixels has shape \[2, 3, 28, 28\]: expected 28x28 images \[N, 1, H, W\], "
                               r"\[N, H, W, 1\], \[N, H, W\] or one image \[H, W\]$"),
    (np.zeros((5, 784)), r"^pixels has shape \[5, 784\]: expected 28x28"),
    (np.zeros(784), r"^pixels has shape \[784\]"),
    (np.zeros((28, 28), bool), r"^pixels has dtype bool: expected integers 0\.\.255 or floats in \[0, 1\]$"),
    ([["a"] * 28] * 28, r"^pixels has dtype <U1: expected integers"),
    ([[0] * 28] * 27 + [[0] * 5], r"^pixels is not a rectangular array"),
])
def test_anything_else_is_refused_in_one_line_naming_the_parameter(bad, message):
    with pytest.raises(MnistCnnError, match=message) as e:
        as_model_input(bad, name="pixels", size=(28, 28))
    assert "\n" not in str(e.value)


def test_labels_are_integers_or_one_hot_rows():
    y = np.array([3, 0, 9])
    assert as_labels(y).tolist() == [3, 0, 9] and as_labels(y).dtype == torch.int64
    assert as_labels(np.eye(10)[y], 10).tolist() == [3, 0, 9]
    assert as_labels(torch.tensor([1, 2], dtype=torch.uint8), 10).tolist() == [1, 2]
    for bad, message in [(y.astype(float), r"^labels: labels must be one integer per image \[N\] or one-hot"),
                         (np.eye(10)[y] * 0.5, r"^labels: one-hot labels \[N, C\] must hold one 1 per row"),
                         (np.eye(3)[[0, 1]], r"one-hot \[N, 10\], got torch\.float64 of shape \(2, 3\)"),
                         (y + 1, r"^labels: labels must be 0\.\.9, got values in \[1, 10\]$")]:
        with pytest.raises(MnistCnnError, match=message):
            as_labels(bad, 10, name="labels")


def test_to_float_makes_the_model_input_format():
    x = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    out = to_float(x)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 2, 2)
    assert out.flatten().tolist() == pytest.approx([0.0, 1.0, 0.2, 0.4])
    assert to_float(np.zeros((3, 28, 28), dtype=np.uint8)).shape == (3, 1, 28, 28)


def test_to_float_refuses_anything_but_uint8_images():
    with pytest.raises(MnistCnnError, match=r"to_float expects uint8 images \[N, H, W\], got torch.float32"):
        to_float(torch.zeros(2, 28, 28))
    with pytest.raises(MnistCnnError, match=r"shape \(2, 1, 28, 28\)"):
        to_float(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


