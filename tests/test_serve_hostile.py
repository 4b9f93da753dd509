"""Hostile clients against the real `mnist-cnn serve` command on 127.0.0.1: idle and slow connections, malformed
requests, uploads that decode to too many pixels, and heavy uploads beside light ones. Each gets the service's
JSON error or a bounded wait, and normal clients keep being served. Every loop here is bounded and every socket
stops by itself; only loopback addresses are contacted.

The server runs as a subprocess with small limits set through its environment (serve_limits.py names them).
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import httpx
import pytest
from images import encode as png
from images import png_bomb as header_only_png
from PIL import Image, ImageDraw

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra: pip install 'mnist-cnn[serve]'")
pytest.importorskip("python_multipart", reason="uploads need python-multipart (the 'serve' extra)")

LIMITS = {"MNIST_CNN_MAX_CONNECTIONS": "6", "MNIST_CNN_IDLE_TIMEOUT_S": "3", "MNIST_CNN_REQUEST_TIMEOUT_S": "2",
          "MNIST_CNN_DECODE_THREADS": "1", "MNIST_CNN_MAX_REQUEST_PIXELS": "200000000"}
BYTE_EVERY_S = 0.5  # a slow client's pace: far inside the idle timeout, so only the whole-request deadline cuts it
SLOW_BYTES = 30  # 15 s of trickling: well past the 2 s deadline, and a bound when nothing cuts it
IDLE_CLIENTS = 256  # what took uvicorn's default cap (issue 23): every other client got 503 while they stayed


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    """`mnist-cnn serve RUN` on a free loopback port; yields (host, port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("serve-hostile") / "server.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mnist_cnn", "serve", str(trained_run.path), "--port", str(port)],
            stdout=err, stderr=err, env={**os.environ, **LIMITS})
    try:
        deadline = time.monotonic() + 120
        while not healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def digit_png(side: int = 300) -> bytes:
    im = Image.new("L", (side, side), 235)
    ImageDraw.Draw(im).line([(side // 2, side // 10), (side // 2 - 4, side - side // 10)], fill=20, width=side // 20)
    return png(im)


def predict(address: tuple[str, int], files: list[tuple[str, bytes]], timeout: float = 60) -> httpx.Response:
    host, port = address
    upload = [("file", (name, data, "image/png")) for name, data in files]
    return httpx.post(f"http://{host}:{port}/v1/predict", files=upload, timeout=timeout)


def error_of(reply: bytes) -> tuple[int, dict]:
    """(status, JSON body) of a raw HTTP/1.1 reply."""
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def trickle(address: tuple[str, int], head: bytes, byte: bytes) -> bytes:
    """Send `head`, then one `byte` every BYTE_EVERY_S until the server answers and closes (or SLOW_BYTES are sent)."""
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(head)
        reply = b""
        for _ in range(SLOW_BYTES):
            if select.select([s], [], [], BYTE_EVERY_S)[0]:
                chunk = s.recv(65536)
                if not chunk:
                    return reply
                reply += chunk
                continue
            try:
                s.sendall(byte)
            except OSError:  # the server closed while we were sending: what it wrote is still to be read
                break
        s.settimeout(1)
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except OSError:
            pass
        return reply


def test_slow_headers_are_cut_at_the_whole_request_deadline(server):
    reply = trickle(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a")
    assert reply, "the server kept a connection that sent a header byte every 0.5 s for 15 s"
    status, body = error_of(reply)
    assert status == 408 and body["error"] == "request_timeout" and "2 s" in body["detail"]


def test_a_slow_body_is_cut_at_the_whole_request_deadline(server):
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
    reply = trickle(server, head, b"\0")
    assert reply, "the server kept a connection that sent a body byte every 0.5 s for 15 s"
    status, body = error_of(reply)
    assert status == 408 and body["error"] == "request_timeout"


def test_an_idle_connection_is_closed(server):
    with socket.create_connection(server, timeout=15) as s:  # nothing sent, ever
        try:
            closed = s.recv(1) == b""
        except TimeoutError:
            closed = False
    assert closed, "an idle connection was still open after 15 s"


def test_idle_connections_cannot_take_the_server(server):
    host, port = server
    with ExitStack() as stack:
        for _ in range(IDLE_CLIENTS):  # each one over the cap closes the longest-idle one
            stack.enter_context(socket.create_connection(server, timeout=10))
        answer = httpx.get(f"http://{host}:{port}/healthz", timeout=10)
    assert answer.status_code == 200, answer.text


def test_busy_connections_over_the_cap_get_a_json_503_and_normal_clients_are_served_once_they_go(server):
    host, port = server
    with ExitStack() as stack:
        for _ in range(int(LIMITS["MNIST_CNN_MAX_CONNECTIONS"])):  # clients in the middle of sending a request
            stack.enter_context(socket.create_connection(server, timeout=10)).sendall(b"GET /healthz HTTP/1.1\r\n")
        refused = httpx.get(f"http://{host}:{port}/healthz", timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "busy" and refused.json()["detail"]
        answers = []
        for _ in range(100):  # the whole-request deadline (2 s) cuts the stalled requests
            answers.append(httpx.get(f"http://{host}:{port}/healthz", timeout=10))
            if answers[-1].status_code == 200:
                break
            time.sleep(0.1)
    assert answers[-1].status_code == 200
    assert all(a.status_code == 503 and a.json()["error"] == "busy" for a in answers[:-1])


def test_a_malformed_request_gets_a_json_400(server):
    with socket.create_connection(server, timeout=10) as s:
        s.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    status, body = error_of(reply)
    assert status == 400 and body["error"] == "bad_request" and body["detail"]


def test_images_over_the_request_pixel_budget_are_refused_before_decoding(server):
    # header-only PNGs of 25 Mpx each, 250 Mpx in all: decoding any would answer 422 truncated_image instead
    r = predict(server, [(f"{i}.png", header_only_png(5000, 5000)) for i in range(10)])
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "too_many_pixels" and "before decoding" in r.json()["detail"]


def test_a_light_request_is_served_while_heavy_ones_decode(server):
    big = digit_png(2000)
    heavy = [(f"big{i}.png", big) for i in range(40)]  # 160 Mpx per request, within its budget
    finished: list[str] = []
    statuses: dict[str, int] = {}

    def send(name: str, files: list[tuple[str, bytes]]) -> None:
        statuses[name] = predict(server, files, timeout=300).status_code
        finished.append(name)

    heavies = [threading.Thread(target=send, args=(f"heavy{i}", heavy)) for i in range(2)]
    for t in heavies:
        t.start()
    time.sleep(0.5)  # sequencing only: let both heavy requests reach the decoder first
    send("light", [("light.png", digit_png())])
    for t in heavies:
        t.join(timeout=300)
    assert statuses == {"heavy0": 200, "heavy1": 200, "light": 200}
    assert finished[0] == "light", finished  # it waited for one image of each heavy request, not for all 80
