"""The HTTP service: predictions from uploads and arrays, a 4xx JSON error for every bad input."""

from __future__ import annotations

import asyncio
import warnings
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra: pip install 'mnist-cnn[serve]'")
pytest.importorskip("python_multipart", reason="uploads need python-multipart (the 'serve' extra)")

from images import encode as png
from images import png_bomb as bomb_header

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.serve import MAX_IMAGES, create_app

with warnings.catch_warnings():  # starlette 1.x suggests httpx2 for its TestClient; httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def one(dark_on_light: bool = True) -> bytes:
    """A vertical stroke: a '1' as a person would draw it, 300x200 with margins."""
    ink, paper = (20, 235) if dark_on_light else (235, 20)
    im = Image.new("L", (300, 200), paper)
    ImageDraw.Draw(im).line([(150, 30), (146, 170)], fill=ink, width=14)
    return png(im)


@pytest.fixture(scope="module")
def client(trained_run):
    return TestClient(create_app(trained_run, max_body_bytes=1_000_000))


def test_head_requests_for_monitors(client):
    assert client.head("/healthz").status_code == 200 and client.head("/").status_code == 200


def test_health_page_and_schema(client, trained_run):
    health = client.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["model"] == {"name": trained_run.name, "run": trained_run.path.name, "params": trained_run.num_params,
                               "test_accuracy": trained_run.metrics["accuracy"]}
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        body = client.get(asset)
        assert body.status_code == 200 and "http://" not in body.text and "https://" not in body.text
    assert "http" not in page.text  # no external URL anywhere on the page
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]) >= {
        "multipart/form-data", "application/json"}
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN: off


def test_upload_predicts_and_returns_the_model_input(client, trained_run):
    r = client.post("/v1/predict", files={"file": ("one.png", one(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["name"] == trained_run.name and body["model"]["params"] == trained_run.num_params
    p = body["predictions"][0]
    assert p["file"] == "one.png" and p["digit"] == 1 and len(p["probabilities"]) == 10
    assert abs(sum(p["probabilities"]) - 1) < 1e-4 and p["top3"][0] == {"digit": 1, "probability": p["probability"]}
    image = np.array(p["image"])
    assert image.shape == (28, 28) and image.max() == 255 and image[0, 0] == 0


def test_several_files_raw_body_and_light_on_dark(client):
    files = [("file", ("a.png", one(), "image/png")), ("file", ("b.png", one(False), "image/png"))]
    r = client.post("/v1/predict", files=files)
    assert [p["digit"] for p in r.json()["predictions"]] == [1, 1]
    r = client.post("/v1/predict", content=one(), headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.json()["predictions"][0]["digit"] == 1


def test_json_arrays_in_both_value_ranges(client, mnist, trained_run):
    x = mnist.x_test[:4].numpy()
    unit = client.post("/v1/predict", json={"images": (x / 255.0).tolist()}).json()["predictions"]
    byte = client.post("/v1/predict", json={"images": x.tolist(), "value_range": "byte"}).json()["predictions"]
    expected = trained_run.predict_proba(mnist.x_test[:4].float().div(255).unsqueeze(1)).numpy()
    for a, b, e in zip(unit, byte, expected):
        assert a["digit"] == b["digit"] == int(e.argmax())
        assert np.abs(np.array(a["probabilities"]) - e).max() < 1e-5 and "image" not in a
        assert np.abs(np.array(b["probabilities"]) - e).max() < 1e-5  # 0-255 means the same images


ARRAY = [[0] * 28] * 28


def test_a_request_of_exactly_max_images_is_served(client):
    response = client.post("/v1/predict", json={"images": [ARRAY] * MAX_IMAGES})
    assert response.status_code == 200 and len(response.json()["predictions"]) == MAX_IMAGES


@pytest.mark.parametrize("kwargs, status, code", [
    ({"files": {"file": ("x.png", b"not an image at all", "image/png")}}, 422, "not_an_image"),
    ({"files": {"file": ("x.png", one()[:400], "image/png")}}, 422, "truncated_image"),
    ({"files": {"file": ("bomb.png", bomb_header(), "image/png")}}, 413, "image_too_large"),
    ({"files": {"file": ("blank.png", png(Image.new("L", (50, 50), 255)), "image/png")}}, 422, "blank_image"),
    ({"files": {"other": ("x.png", one(), "image/png")}}, 422, "missing_file"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "bad_json"),
    ({"json": {"pictures": [ARRAY]}}, 422, "bad_request"),
    ({"json": {"images": []}}, 422, "bad_request"),
    ({"json": {"images": [[[0] * 27] * 28]}}, 422, "bad_shape"),
    ({"json": {"images": [[[0] * 28] * 27 + [[0] * 5]]}}, 422, "bad_shape"),  # ragged
    ({"json": {"images": [[0] * 784]}}, 422, "bad_shape"),
    ({"json": {"images": [[["a"] * 28] * 28]}}, 422, "bad_value"),
    ({"json": {"images": [[[1.5] * 28] * 28]}}, 422, "out_of_range"),
    ({"json": {"images": [[[-0.1] * 28] * 28]}}, 422, "out_of_range"),
    ({"json": {"images": [[[256] * 28] * 28], "value_range": "byte"}}, 422, "out_of_range"),
    ({"json": {"images": [[[0.5] * 28] * 28], "value_range": "byte"}}, 422, "out_of_range"),
    ({"json": {"images": [ARRAY], "value_range": "percent"}}, 422, "bad_request"),
    ({"json": {"images": [ARRAY] * (MAX_IMAGES + 1)}}, 413, "too_many_images"),
    ({"files": [("file", ("x.png", b"x", "image/png"))] * (MAX_IMAGES + 1)}, 413, "too_many_images"),
    ({"content": b"\0" * 1_000_001, "headers": {"content-type": "image/png"}}, 413, "body_too_large"),
    ({"content": iter([b"\0" * 400_000] * 3), "headers": {"content-type": "image/png"}}, 413, "body_too_large"),
    ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
    ({"content": b"garbage", "headers": {"content-type": "multipart/form-data"}}, 400, "bad_request"),
    ({"content": b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
      "headers": {"content-type": "application/json"}}, 400, "bad_json"),  # nesting too deep to parse
])
def test_bad_input_gets_a_4xx_json_error(client, kwargs, status, code):
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and body["detail"] and "\n" not in body["detail"]
    assert client.get("/healthz").status_code == 200  # and the service is still up


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       keep=st.floats(0.05, 1.0))
def test_damaged_uploads_never_get_a_5xx(client, cuts, keep):
    data = bytearray(one())
    for where, value in cuts:
        data[where % len(data)] = value
    r = client.post("/v1/predict", files={"file": ("x.png", bytes(data[: max(1, int(len(data) * keep))]), "image/png")})
    assert r.status_code in (200, 413, 422), r.text


def test_a_client_that_leaves_mid_upload_is_not_an_error(trained_run):
    # Starlette's ServerErrorMiddleware re-raises what reaches the catch-all handler: uvicorn would log a traceback
    app = create_app(trained_run)
    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"",
             "headers": [(b"content-type", b"image/png"), (b"content-length", b"1000")], "http_version": "1.1",
             "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1234), "root_path": ""}
    incoming = [{"type": "http.request", "body": b"\x89PNG", "more_body": True}, {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))  # raised ClientDisconnect before
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [400]


def test_nan_in_json_is_out_of_range(client):
    body = b'{"images": [[' + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]]}"
    r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "out_of_range"


def test_concurrent_requests_on_a_real_server(trained_run, start_server):
    url = start_server(create_app(trained_run))
    payload = one()

    def call(i: int) -> int:
        with httpx.Client(base_url=url, timeout=30) as http:
            r = http.post("/v1/predict", files={"file": (f"{i}.png", payload, "image/png")})
            return r.json()["predictions"][0]["digit"] if r.status_code == 200 else -r.status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(call, range(32))) == [1] * 32


def test_the_app_factory_serves_the_run_named_in_the_environment(trained_run, monkeypatch):
    from mnist_cnn.serve import app_from_env

    monkeypatch.delenv("MNIST_CNN_RUN", raising=False)
    with pytest.raises(MnistCnnError, match="MNIST_CNN_RUN is not set"):
        app_from_env()
    monkeypatch.setenv("MNIST_CNN_RUN", str(trained_run.path))
    monkeypatch.setenv("MNIST_CNN_MAX_BODY_BYTES", "1000")
    client = TestClient(app_from_env())
    assert client.get("/healthz").json()["model"]["run"] == trained_run.path.name
    r = client.post("/v1/predict", content=bytes(1001), headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"  # the budget came from the environment


def test_service_limits_from_the_environment_are_checked():
    from mnist_cnn.serve_limits import ServeLimits

    limits = ServeLimits.from_env({"MNIST_CNN_DECODE_THREADS": "3", "MNIST_CNN_REQUEST_TIMEOUT_S": "2.5"})
    assert (limits.decode_threads, limits.request_timeout_s, limits.max_connections) == (3, 2.5, 256)
    with pytest.raises(MnistCnnError, match="MNIST_CNN_DECODE_THREADS must be a number, got 'many'"):
        ServeLimits.from_env({"MNIST_CNN_DECODE_THREADS": "many"})
    with pytest.raises(MnistCnnError, match="decode_threads must be a positive integer, got 0"):
        ServeLimits.from_env({"MNIST_CNN_DECODE_THREADS": "0"})
    with pytest.raises(MnistCnnError, match="unknown service limit 'body_timeout_s'"):
        ServeLimits.from_env({}, body_timeout_s=1)
