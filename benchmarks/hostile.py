"""Hostile clients for serve_load.py: idle connections, slow senders and decode-heavy uploads, run in a child
process (so they do not take the GIL from the normal clients measured beside them) against 127.0.0.1 until the
`with` block ends. Every loop checks a stop event; nothing outlives the block.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import selectors
import socket
import threading
from collections import Counter
from collections.abc import Callable
from typing import Self

import httpx

SCENARIOS = ("normal", "idle", "slow", "heavy")
IDLE_CONNECTIONS = 300  # more than the server's default cap of 256 (issue 23 used 257)
SLOW_CLIENTS = 20
HEAVY_CLIENTS = 2
SLOW_HEAD = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"


def png(side: int) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("L", (side, side), 0)
    ImageDraw.Draw(im).line([(side // 3, side // 5), (side // 2, 4 * side // 5)], fill=255, width=side // 15)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


class Hostile:
    """`with Hostile("idle", host, port) as h: ...normal traffic...`; then h.report() says what they met."""

    def __init__(self, scenario: str, host: str, port: int) -> None:
        self.stop, (self.results, sender) = multiprocessing.Event(), multiprocessing.Pipe(duplex=False)
        self.process = multiprocessing.Process(target=Clients(scenario, (host, port), self.stop).run, args=(sender,),
                                               daemon=True)
        self.counts: dict[str, int] = {}

    def __enter__(self) -> Self:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.results.poll(180):
            self.counts = self.results.recv()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()

    def report(self) -> dict[str, int]:
        return self.counts


class Clients:
    """The scenario's clients, as threads of the child process; `run` sends their counts back when stopped."""

    def __init__(self, scenario: str, address: tuple[str, int], stop: multiprocessing.synchronize.Event) -> None:
        self.scenario, self.address, self.stop = scenario, address, stop
        self.counts, self.lock = Counter[str](), threading.Lock()

    def run(self, results: multiprocessing.connection.Connection) -> None:
        work: dict[str, list[Callable[[], None]]] = {
            "normal": [], "idle": [self.idle], "slow": [self.slow], "heavy": [self.heavy] * HEAVY_CLIENTS}
        threads = [threading.Thread(target=w, daemon=True) for w in work[self.scenario]]
        for t in threads:
            t.start()
        self.stop.wait()
        for t in threads:
            t.join(timeout=150)
        results.send(dict(sorted(self.counts.items())))

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def connect(self, sel: selectors.BaseSelector) -> None:
        s = socket.create_connection(self.address, timeout=10)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, bytearray(SLOW_HEAD + bytes(1000)))
        self.count("connections opened")

    def idle(self) -> None:
        """Connections that never send; each one the server closes is opened again."""
        self.trickle(IDLE_CONNECTIONS, every_s=None)

    def slow(self) -> None:
        """Clients sending a request one byte a second; each one the server answers is started again."""
        self.trickle(SLOW_CLIENTS, every_s=1.0)

    def trickle(self, n: int, every_s: float | None) -> None:
        with selectors.DefaultSelector() as sel:
            for _ in range(n):
                self.connect(sel)
            while not self.stop.is_set():
                for key, _ in sel.select(timeout=every_s or 0.2):
                    try:
                        reply = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    except OSError:
                        reply = b""
                    self.count(f"answered {reply.split(b' ')[1].decode()}" if reply.startswith(b"HTTP/") else
                               "closed without an answer")
                    sel.unregister(key.fileobj)
                    key.fileobj.close()  # type: ignore[union-attr]
                    self.connect(sel)
                if every_s is not None:
                    for key in list(sel.get_map().values()):
                        pending: bytearray = key.data
                        try:
                            key.fileobj.send(pending[:1])  # type: ignore[union-attr]
                            del pending[:1]
                        except OSError:
                            pass
            for key in list(sel.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]

    def heavy(self) -> None:
        """Uploads of 10 images of 2000x2000 (40 Mpx, within the budget), alternating with issue 23's upload of
        80 images of 5000x5000 (2 Gpx, refused from the headers)."""
        medium = png(2000)
        heavy = [("file", (f"{i}.png", medium, "image/png")) for i in range(10)]
        big = png(5000)
        issue = [("file", (f"{i}.png", big, "image/png")) for i in range(80)]
        with httpx.Client(base_url=f"http://{self.address[0]}:{self.address[1]}", timeout=120) as client:
            for i in range(10**6):
                if self.stop.is_set():
                    return
                files, kind = (heavy, "40 Mpx") if i % 2 == 0 else (issue, "2 Gpx")
                try:
                    self.count(f"{kind}: {client.post('/v1/predict', files=files).status_code}")
                except httpx.HTTPError as e:
                    self.count(f"{kind}: {type(e).__name__}")
