"""uvicorn's HTTP/1.1 protocol with the deadlines and the connection cap that idle or slow clients need.

uvicorn alone has neither an idle timeout before a connection's first request nor a deadline for a whole
request (a client sending a header byte every 10 s is held for ever), and it writes its own answers (400
for a malformed request, 503 over `--limit-concurrency`) as plain text, outside the app. Those decisions
live in the protocol, so this subclass of it makes them:
  * idle: a connection with no request in progress is closed after `timeout_keep_alive` seconds, from
    the moment it opens as well as between requests;
  * deadline: a request must arrive whole, headers and body, within `request_timeout_s` of its first
    byte, or it gets 408 `request_timeout` and the connection is closed;
  * cap: a connection opened while `limit_concurrency` are open closes the longest-idle one (as nginx does
    with keep-alive connections), so idle clients never take a working client's place; when none is idle,
    the new one gets 503 `busy` as soon as its request line and headers arrive, and is closed;
  * every answer it writes itself is the service's JSON `{"error", "detail"}`.
Use it with `uvicorn --http mnist_cnn.http_guard:GuardedH11Protocol`; `mnist-cnn serve` does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .serve_limits import ServeLimits

REASONS = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}


def json_answer(status: int, code: str, detail: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, with the service's error body."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, REASONS[status], len(body)))
    return head + body


class GuardedH11Protocol(H11Protocol):
    #: None: from MNIST_CNN_REQUEST_TIMEOUT_S (default 30 s). `mnist-cnn serve` sets it on a subclass.
    request_timeout_s: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline_s = self.request_timeout_s or ServeLimits.from_env().request_timeout_s
        self.max_connections, self.limit_concurrency = self.limit_concurrency, None  # our cap answers in JSON
        self.over_cap = False
        self.deadline: asyncio.TimerHandle | None = None
        self.idle_since = self.loop.time()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.over_cap = self.max_connections is not None and not self.make_room(self.max_connections)
        # uvicorn arms its keep-alive timer only after a response; arming it now also covers the first request
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def make_room(self, cap: int) -> bool:
        """True when this connection fits under the cap, once the longest-idle other one is closed if need be."""
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        if len(others) < cap:
            return True
        idle = [c for c in others if isinstance(c, GuardedH11Protocol) and c.is_idle()]
        if not idle:
            return False
        min(idle, key=lambda c: c.idle_since).timeout_keep_alive_handler()
        return True

    def is_idle(self) -> bool:
        """No request in progress: none being received (not even a first byte), none being answered."""
        return self.deadline is None and self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE

    def data_received(self, data: bytes) -> None:
        if self.deadline is None and self.conn.their_state is h11.IDLE:  # the first byte of a request
            self.deadline = self.loop.call_later(self.deadline_s, self.request_timed_out)
        if self.over_cap:
            return self.refuse_over_cap(data)
        super().data_received(data)
        if self.conn.their_state is not h11.SEND_BODY and self.conn.their_state is not h11.IDLE:
            self.cancel_deadline()  # the request is in whole (or the connection is failing): the app's time now

    def on_response_complete(self) -> None:
        self.idle_since = self.loop.time()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_deadline()
        super().connection_lost(exc)

    def cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def refuse_over_cap(self, data: bytes) -> None:
        """Read up to the end of the headers (so the client is ready for an answer), then answer 503."""
        self._unset_keepalive_if_required()
        self.conn.receive_data(data)
        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError:
            event = None
        if event is h11.NEED_DATA:
            return
        self.answer(503, "busy", f"the server has {self.max_connections} connections open, its limit; try again "
                    "shortly")

    def request_timed_out(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            if self.cycle.response_started:  # too late for a status line: just end it
                self.transport.close()
                return
            self.cycle.disconnected = True  # the app sees a disconnect; whatever it answers is dropped
            self.cycle.message_event.set()
        self.answer(408, "request_timeout", f"request not received in whole within {self.deadline_s:g} s")

    def send_400_response(self, msg: str) -> None:
        self.answer(400, "bad_request", f"malformed HTTP request ({msg.rstrip('.')})")

    def answer(self, status: int, code: str, detail: str) -> None:
        """Write the JSON error directly (h11's state may not allow a response yet) and close."""
        self.logger.info("%s: %d %s", self.client, status, code)
        self.transport.write(json_answer(status, code, detail))
        self.transport.close()


def guarded_protocol(limits: ServeLimits) -> type[GuardedH11Protocol]:
    """The protocol class with `limits.request_timeout_s` set, for a server started from Python."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"request_timeout_s": limits.request_timeout_s})
