import math

import pytest
import torch

from mnist_cnn.augment import (
    Augment,
    affine_from_params,
    affine_grid,
    affine_matrices,
    apply_affine,
    plot_augmented,
    random_affine,
)
from mnist_cnn.errors import MnistCnnError

FULL = Augment(rotation=10, width_shift=0.1, height_shift=0.1, shear=10, zoom=0.1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=gen(seed))


def params(n: int = 1, angle=0.0, dx=0.0, dy=0.0, shear=0.0, zx=1.0, zy=1.0, size=(28, 28)):
    a, x, y, s, zx_, zy_ = (torch.full((n,), float(v)) for v in (angle, dx, dy, shear, zx, zy))
    return affine_from_params(a, x, y, s, zx_, zy_, size)


@pytest.mark.parametrize("size", [(28, 28), (20, 40), (1, 3)])
def test_our_sampling_grid_is_pytorchs_affine_grid(size):
    theta = affine_matrices(50, FULL, gen(3), size=size).double()
    expected = torch.nn.functional.affine_grid(theta, [50, 1, *size], align_corners=False)
    torch.testing.assert_close(affine_grid(theta, size), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
def test_shape_and_dtype_kept(dtype):
    x = (images(5) * 255).to(dtype)
    y = random_affine(x, FULL, gen())
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device


def test_identity_returns_the_input_itself():
    x = images()
    assert Augment().is_identity and not FULL.is_identity
    assert random_affine(x, Augment(), gen()) is x
    # the identity matrix through the sampler: float to rounding error, uint8 exactly
    torch.testing.assert_close(apply_affine(x, params(4)), x, atol=1e-5, rtol=0)
    xu = (x * 255).to(torch.uint8)
    assert torch.equal(apply_affine(xu, params(4)), xu)


def test_rotation_90_is_counter_clockwise_on_screen():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 5, 20] = 1.0  # row 5, col 20: up-right of the centre (13.5, 13.5), offset (+6.5, -8.5)
    y = apply_affine(x, params(angle=90))
    # counter-clockwise by 90 on screen (y down): (u, v) -> (v, -u) = (-8.5, -6.5) -> col 5, row 7
    assert y[0, 0, 7, 5].item() == pytest.approx(1.0, abs=1e-5)
    assert y.sum().item() == pytest.approx(1.0, abs=1e-4)
    # and a whole image agrees with torch.rot90 (counter-clockwise, like np.rot90)
    z = images(2)
    torch.testing.assert_close(apply_affine(z, params(2, angle=90)), torch.rot90(z, 1, dims=(-2, -1)),
                               atol=1e-5, rtol=0)


def test_shift_moves_content_by_whole_pixels():
    x = images(2)
    y = apply_affine(x, params(2, dx=3, dy=-2))  # 3 px right, 2 px up
    expected = torch.zeros_like(x)
    expected[..., 0:26, 3:28] = x[..., 2:28, 0:25]
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)


def test_shift_fraction_scales_with_image_size_and_non_square_images():
    x = torch.rand(1, 1, 20, 40, generator=gen())
    y = apply_affine(x, params(dx=4, dy=2, size=(20, 40)))
    torch.testing.assert_close(y[..., 2:, 4:], x[..., :-2, :-4], atol=1e-5, rtol=0)
    theta = affine_matrices(1000, Augment(width_shift=0.1), gen(), size=(28, 28))
    assert torch.equal(theta[:, :, :2], torch.eye(2).expand(1000, 2, 2))  # a pure shift ...
    assert theta[:, 1, 2].abs().max() == 0 and 0.18 < theta[:, 0, 2].abs().max() <= 0.2  # ... of <=10% of W
    theta = affine_matrices(1000, Augment(height_shift=0.1), gen(), size=(20, 40))
    assert 0.18 < theta[:, 1, 2].abs().max() <= 0.2  # <=10% of H (2 px of 20), not of W


def test_keras_shear_and_zoom_matrices():
    th = params(shear=30)[0]
    torch.testing.assert_close(th[:, :2], torch.tensor([[1.0, -0.5], [0.0, math.cos(math.pi / 6)]]))
    th = params(angle=90, zx=2)[0]  # R @ Z: the zoom scales the x column, after the rotation too
    torch.testing.assert_close(th[:, :2], torch.tensor([[0.0, -1.0], [2.0, 0.0]]), atol=1e-6, rtol=0)
    # Keras zoom is the sampling-grid scale: factor 2 shows twice the field of view -> the digit shrinks
    x = torch.zeros(1, 1, 28, 28)
    x[..., 9:19, 9:19] = 1.0
    y = apply_affine(x, params(zx=2, zy=2))
    assert y.sum().item() == pytest.approx(x.sum().item() / 4, rel=0.05)
    zooms = affine_matrices(2000, Augment(zoom=0.2), gen())
    zx, zy = zooms[:, 0, 0], zooms[:, 1, 1]
    assert 0.8 <= zx.min() < 0.82 and 1.18 < zx.max() <= 1.2 and not torch.equal(zx, zy)  # per axis


def test_seeded_reproducibility():
    x = images(8)
    assert torch.equal(random_affine(x, FULL, gen(1)), random_affine(x, FULL, gen(1)))
    assert not torch.equal(random_affine(x, FULL, gen(1)), random_affine(x, FULL, gen(2)))
    g = gen(3)
    assert not torch.equal(random_affine(x, FULL, g), random_affine(x, FULL, g))  # the stream advances


def test_each_image_gets_its_own_transform():
    one = images(1)
    y = random_affine(one.expand(2, 1, 28, 28).contiguous(), FULL, gen())
    assert not torch.allclose(y[0], y[1])


def test_batch_order_is_kept_so_labels_still_match():
    x = images(6)
    y = random_affine(x, FULL, gen(7))
    theta = affine_matrices(6, FULL, gen(7))  # the same draws random_affine made
    for i in range(6):  # image i, transformed alone with its matrix, is what sits at position i
        torch.testing.assert_close(y[i : i + 1], apply_affine(x[i : i + 1], theta[i : i + 1]))


def test_dict_round_trip():
    assert Augment.from_dict(FULL.to_dict()) == FULL
    assert Augment.from_dict(None) == Augment() == Augment.from_dict({})
    assert Augment(rotation=10).to_dict()["rotation"] == 10.0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"rotation": -5}, ["rotation", "-5"]),
        ({"zoom": float("nan")}, ["zoom", "nan"]),
        ({"width_shift": 1.5}, ["width_shift", "1.5"]),
        ({"height_shift": -0.1}, ["height_shift", "-0.1"]),
        ({"shear": 90}, ["shear", "90"]),
        ({"rotation": "ten"}, ["rotation", "'ten'"]),
        ({"zoom": True}, ["zoom", "True"]),
    ],
)
def test_validation_names_field_and_value(kwargs, words):
    with pytest.raises(MnistCnnError) as e:
        Augment(**kwargs)
    assert all(w in str(e.value) for w in words)
    with pytest.raises(MnistCnnError):
        Augment.from_dict(kwargs)


def test_bad_inputs():
    with pytest.raises(MnistCnnError, match="rotate"):
        Augment.from_dict({"rotate": 10})
    with pytest.raises(MnistCnnError, match="N,C,H,W"):
        random_affine(torch.zeros(28, 28), FULL, gen())
    with pytest.raises(MnistCnnError, match="int64"):
        random_affine(torch.zeros(1, 1, 28, 28, dtype=torch.int64), FULL, gen())


def test_plot_augmented(tmp_path):
    pytest.importorskip("matplotlib")
    x = (images(4) * 255).to(torch.uint8)[:, 0]  # [N,28,28] uint8 as data.py stores it
    fig = plot_augmented(x, FULL, tmp_path / "grid.png", seed=0, n=4)
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 4 * 4 and fig.get_size_inches().tolist() == [4, 4]
