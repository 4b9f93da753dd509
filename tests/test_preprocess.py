"""User images -> MNIST form (centred, white on black, 20x20 box), and predicting on image files."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from images import png_bomb as png_header_only
from images import tiff_with_a_rational_strip_offset
from PIL import Image, ImageDraw

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.predict import format_predictions, predict_arrays, predict_files
from mnist_cnn.preprocess import (
    ImageError,
    center_of_mass,
    load_image,
    preprocess_array,
)


def seven(mode: str = "L", ink=20, paper=235, size=(300, 200)) -> Image.Image:
    """A '7' drawn off-centre on a 300x200 page with wide margins."""
    im = Image.new(mode, size, paper)
    ImageDraw.Draw(im).line([(60, 40), (130, 40), (90, 160)], fill=ink, width=12)
    return im


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def assert_mnist_like(a: np.ndarray) -> None:
    assert a.shape == (28, 28) and a.dtype == np.uint8
    cy, cx = center_of_mass(a)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1, (cy, cx)
    assert a[0, 0] == a[-1, -1] == 0 and a.max() == 255  # white ink on a black background
    rows, cols = np.flatnonzero((a > 50).any(1)), np.flatnonzero((a > 50).any(0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert max(h, w) in (19, 20, 21)  # the longer side fitted to the 20x20 box


def test_dark_on_light_with_margins_is_centred_white_on_black():
    a = load_image(encode(seven()))
    assert_mnist_like(a)


def test_polarity_and_alpha_give_the_same_digit():
    dark_on_light = load_image(encode(seven()))
    light_on_dark = load_image(encode(seven(ink=235, paper=20)))
    rgba = seven("RGBA", ink=(20, 20, 20, 255), paper=(255, 255, 255, 0))  # dark ink on transparency
    light_rgba = seven("RGBA", ink=(250, 250, 250, 255), paper=(0, 0, 0, 0))  # light ink on transparency
    for other in (light_on_dark, load_image(encode(rgba)), load_image(encode(light_rgba))):
        assert_mnist_like(other)
        assert np.abs(other.astype(int) - dark_on_light).max() <= 2


def test_colour_jpeg_on_grey_paper_with_noise():
    rng = np.random.default_rng(0)
    page = np.full((200, 300, 3), (170, 165, 150), np.float64) + rng.normal(0, 6, (200, 300, 3))
    ink = np.asarray(seven(paper=0, ink=255)) > 0
    page[ink] = (40, 50, 120)  # blue ballpoint
    im = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))
    assert_mnist_like(load_image(encode(im, "JPEG", quality=85)))


def test_exif_orientation_is_applied():
    im = Image.new("L", (200, 100), 255)
    ImageDraw.Draw(im).line([(40, 50), (160, 50)], fill=0, width=10)  # horizontal as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stroke is vertical as seen
    a = load_image(encode(im, "JPEG", exif=exif))
    rows, cols = np.flatnonzero((a > 50).any(1)), np.flatnonzero((a > 50).any(0))
    assert len(rows) > 2 * len(cols)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_other_formats(fmt):
    assert_mnist_like(load_image(encode(seven(), fmt)))


def test_sixteen_bit_and_palette_transparency():
    ref = load_image(encode(seven()))
    sixteen = Image.fromarray(np.asarray(seven()).astype(np.uint16) * 257)  # mode I;16
    palette = seven().convert("P")
    for data in (encode(sixteen), encode(palette, "GIF", transparency=palette.getpixel((0, 0)))):
        assert np.abs(load_image(data).astype(int) - ref).max() <= 2


def test_a_large_photo_is_decoded_at_a_reduced_scale():
    # libjpeg decodes a 6000x4000 JPEG at half scale (3000x2000), so a 7 Mpx limit lets it through
    big = encode(seven(size=(300, 200)).resize((6000, 4000)).convert("RGB"), "JPEG", quality=80)
    assert_mnist_like(load_image(big, max_pixels=7_000_000))
    with pytest.raises(ImageError, match=r"image dimensions too large \(6000x4000, over 7,000,000 pixels"):
        load_image(encode(seven(size=(300, 200)).resize((6000, 4000))), max_pixels=7_000_000)  # a PNG has no draft


def test_mnist_digits_pass_through_unchanged(mnist):
    x = mnist.x_test[:1000].numpy()
    same = [np.abs(preprocess_array(im).astype(int) - im).max() <= 1 for im in x]
    assert np.mean(same) >= 0.99


def test_arrays_of_any_scale_and_colour():
    g = np.asarray(seven(), dtype=np.float64) / 255.0
    ref = preprocess_array((g * 255).astype(np.uint8))
    assert np.abs(preprocess_array(g).astype(int) - ref).max() <= 1
    rgb = np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)
    assert np.abs(preprocess_array(rgb).astype(int) - ref).max() <= 1
    assert_mnist_like(preprocess_array(g < 0.5))  # booleans: True = ink


@settings(max_examples=40, deadline=None)
@given(h=st.integers(30, 120), w=st.integers(30, 120), data=st.data())
def test_any_blob_lands_centred_in_the_box(h, w, data):
    y0 = data.draw(st.integers(1, h - 8))
    x0 = data.draw(st.integers(1, w - 8))
    y1 = data.draw(st.integers(y0 + 4, h - 1))
    x1 = data.draw(st.integers(x0 + 4, w - 1))
    img = np.zeros((h, w), np.uint8)
    img[y0:y1, x0:x1] = 255
    a = preprocess_array(img)
    cy, cx = center_of_mass(a)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 22  # 20 px plus Lanczos' faint fringe


@pytest.mark.parametrize("data, code", [
    (b"definitely not an image", "not_an_image"),
    (b"", "not_an_image"),
    (encode(seven())[:300], "truncated_image"),
    (png_header_only(10_000, 5_000), "image_too_large"),  # over our limit, under Pillow's
    (png_header_only(10_000, 10_000), "image_too_large"),  # over Pillow's warning limit too: no warning printed
    (tiff_with_a_rational_strip_offset(), "truncated_image"),  # Pillow raises TypeError inside load()
    (png_header_only(100_000, 100_000), "image_too_large"),  # over Pillow's own bomb limit
    (encode(Image.new("L", (64, 64), 200)), "blank_image"),
])
def test_bad_images_get_one_line_errors_naming_the_file(data, code, tmp_path):
    path = tmp_path / "upload.png"
    path.write_bytes(data)
    with pytest.raises(ImageError) as info, warnings.catch_warnings():
        warnings.simplefilter("error")  # a library warning would print a second line before ours
        load_image(path)
    assert info.value.code == code
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, MnistCnnError)


def test_missing_file_and_bad_arrays(tmp_path):
    with pytest.raises(MnistCnnError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(MnistCnnError, match="2-D"):
        preprocess_array(np.zeros((2, 3, 5)))
    with pytest.raises(MnistCnnError, match="NaN"):
        preprocess_array(np.full((5, 5), np.nan))


def test_predict_on_mnist_pngs_matches_the_arrays(trained_run, mnist, tmp_path):
    x, y = mnist.x_test[:300].numpy(), mnist.y_test[:300].numpy()
    paths = []
    for i, im in enumerate(x):
        paths.append(tmp_path / f"{i:03d}.png")
        paths[-1].write_bytes(encode(Image.fromarray(im)))
    on_files = predict_files(trained_run, paths, show_preprocessed_dir=tmp_path / "seen")
    on_arrays = predict_arrays(trained_run, x)
    files_digits = np.array([r["digit"] for r in on_files])
    array_digits = np.array([r["digit"] for r in on_arrays])
    assert (files_digits == y).mean() == pytest.approx((array_digits == y).mean(), abs=0.005)
    assert (files_digits == array_digits).mean() >= 0.99
    first = on_files[0]
    assert first["file"] == str(paths[0]) and len(first["top3"]) == 3 and len(first["probabilities"]) == 10
    assert first["top3"][0]["digit"] == first["digit"]
    seen = np.asarray(Image.open(first["preprocessed"]))
    assert seen.shape == (28, 28) and np.abs(seen.astype(int) - x[0]).max() <= 1


def test_predict_arrays_takes_bytes_or_unit_floats_in_either_layout_and_refuses_the_rest(trained_run, mnist):
    x = mnist.x_test[:4].numpy()
    expected = [r["probabilities"] for r in predict_arrays(trained_run, x)]
    for same in (x.astype(np.float32) / 255, x[:, None], x[..., None], x.astype(np.int64)):
        assert np.allclose([r["probabilities"] for r in predict_arrays(trained_run, same)], expected, atol=1e-6)
    for model in (trained_run.model, torch.nn.Sequential(trained_run.model)):  # any torch model predicts too
        assert np.allclose([r["probabilities"] for r in predict_arrays(model, x)], expected, atol=1e-6)
    for bad, message in [(x.astype(np.float32), r"float images must be in \[0, 1\].*divide 0..255 pixels by 255"),
                         (np.full((28, 28), 300), r"integer images must be 0..255, got values in \[300, 300\]"),
                         (np.full((28, 28), np.nan), r"float images must be in \[0, 1\]"),
                         (np.full((28, 28), 1 + 1e-9), r"got values in \[1.000000001, 1.000000001\]"),  # not rounded
                         (np.zeros((3, 2, 28, 28)), r"images has shape \[3, 2, 28, 28\]: expected 28x28 images"),
                         (np.zeros((5, 784)), r"images has shape \[5, 784\]: expected 28x28 images .*; for a photo or "
                                              r"drawing of any size, use predict_files$")]:
        with pytest.raises(MnistCnnError, match=message):
            predict_arrays(trained_run, bad)


def test_a_pillow_image_or_encoded_bytes_predict_as_their_file_does(trained_run, tmp_path):
    im = seven("RGB", ink=(200, 30, 30), paper=(250, 250, 240))
    (tmp_path / "seven.png").write_bytes(encode(im))
    assert np.array_equal(load_image(im), load_image(tmp_path / "seven.png"))
    on_file = predict_files(trained_run, tmp_path / "seven.png")[0]
    in_memory = predict_files(trained_run, [im, encode(im)], show_preprocessed_dir=tmp_path / "seen")
    assert np.allclose([r["probabilities"] for r in in_memory], [on_file["probabilities"]] * 2, atol=1e-6)  # batch of 2
    assert [r["file"] for r in in_memory] == ["<300x200 RGB image>", "<uploaded bytes>"]
    assert sorted(p.name for p in (tmp_path / "seen").iterdir()) == ["300x200-RGB-image.png", "uploaded-bytes.png"]
    assert predict_files(trained_run, im)[0]["probabilities"] == on_file["probabilities"]  # one image, not a list


def test_predict_files_text_json_and_name_clashes(trained_run, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in "ab":
        (tmp_path / d / "digit.png").write_bytes(encode(seven()))
    results = predict_files(trained_run, [tmp_path / "a" / "digit.png", tmp_path / "b" / "digit.png"],
                            show_preprocessed_dir=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["digit-2.png", "digit.png"]
    original = (tmp_path / "a" / "digit.png").read_bytes()  # written into the images' own folder: none replaced
    in_place = predict_files(trained_run, [tmp_path / "a"], show_preprocessed_dir=tmp_path / "a")
    assert (tmp_path / "a" / "digit.png").read_bytes() == original
    assert in_place[0]["preprocessed"] == str(tmp_path / "a" / "digit-2.png")
    text = format_predictions(results)
    assert len(text.splitlines()) == 2 and "top-3:" in text and "%" in text
    json.dumps(results)  # JSON-ready as it is
    assert [r["file"] for r in predict_files(trained_run, str(tmp_path / "a" / "digit.png"))] == [
        str(tmp_path / "a" / "digit.png")]  # one path, not a list: the file, not its name's characters
    with pytest.raises(MnistCnnError, match="junk.png"):
        (tmp_path / "junk.png").write_bytes(b"junk")
        predict_files(trained_run, [tmp_path / "a" / "digit.png", tmp_path / "junk.png"])


def test_predict_takes_folders_and_goes_on_past_a_bad_file(trained_run, tmp_path, capsys):
    from mnist_cnn.cli import main

    folder = tmp_path / "digits"
    folder.mkdir()
    (folder / "b.png").write_bytes(encode(seven()))
    (folder / "a.JPG").write_bytes(encode(seven(), "JPEG"))
    (folder / "notes.txt").write_text("not an image, not picked up")
    (folder / "sub").mkdir()  # folders inside are not searched
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"junk")
    results = predict_files(trained_run, [folder, junk], skip_unreadable=True)
    assert [Path(r["file"]).name for r in results] == ["a.JPG", "b.png", "junk.png"]
    assert all(r["digit"] == 7 for r in results[:2]) and "not an image" in results[2]["error"]
    assert format_predictions(results).splitlines()[2].startswith(f"error: {junk}: not an image (expected PNG")
    with pytest.raises(MnistCnnError, match="junk.png"):  # the library raises unless told to skip
        predict_files(trained_run, [folder, junk])
    with pytest.raises(MnistCnnError, match=r"empty: no image files in this folder \(looked for .png"):
        (tmp_path / "empty").mkdir()
        predict_files(trained_run, tmp_path / "empty")

    assert main(["predict", str(trained_run.path), str(folder), str(junk), "--json"]) == 2
    out, err = capsys.readouterr()
    assert [r.get("digit") for r in json.loads(out.splitlines()[-1])] == [7, 7, None]
    assert err.startswith("error: ") and "junk.png" in err and len(err.splitlines()) == 1
    assert main(["predict", str(trained_run.path), str(junk), str(folder / "b.png"), str(junk)]) == 2
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "b.png" in out and len(err.splitlines()) == 2


def test_raw_predicts_28x28_files_pixel_for_pixel(trained_run, mnist, tmp_path):
    # a set that is not white digits on black (here: inverted) must not be "prepared" into something else
    x = 255 - mnist.x_test[:20].numpy()
    paths = []
    for i, image in enumerate(x):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(encode(Image.fromarray(image)))
    raw = predict_files(trained_run, paths, raw=True)
    assert [r["probabilities"] for r in raw] == [r["probabilities"] for r in predict_arrays(trained_run, x)]
    big = tmp_path / "big.png"
    big.write_bytes(encode(seven()))
    with pytest.raises(MnistCnnError, match=r"big.png: is 300x200; a raw image must be 28x28"):
        predict_files(trained_run, big, raw=True)
