"""Shared fixtures: the bundled MNIST is loaded once per test session."""

from __future__ import annotations

import pytest
import torch

from mnist_cnn import load_mnist

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def mnist():
    return load_mnist()

# --- fixtures for preprocess / predict / export / serve / browser tests (issue 5) -----------------
import contextlib as _usage_contextlib
import threading as _usage_threading
import time as _usage_time

import pytest as _usage_pytest


@_usage_pytest.fixture(scope="session")
def usage_mnist(mnist):
    """The bundled MNIST, shared with the `mnist` fixture (loaded once per session)."""
    return mnist


@_usage_pytest.fixture(scope="session")
def usage_run(usage_mnist, tmp_path_factory):
    """A small trained run (keras-basic, 1 epoch on 3,000 images): good enough to tell a '1'."""
    from mnist_cnn.train import TrainConfig, train

    out = tmp_path_factory.mktemp("usage-run") / "run"
    config = TrainConfig(model="keras-basic", epochs=1, limit_train=3000, limit_test=1000, out=str(out), verbose=0)
    return train(config, usage_mnist, log=lambda *_: None)


@_usage_pytest.fixture(scope="session")
def usage_start_server():
    """Start an ASGI app with uvicorn on 127.0.0.1 (a free port) in a thread: call with the app,
    get its base URL; every server started is stopped at the end of the session."""
    import uvicorn

    servers = []

    def start(app) -> str:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        thread = _usage_threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = _usage_time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or _usage_time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            _usage_time.sleep(0.02)
        servers.append((server, thread))
        port = server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        with _usage_contextlib.suppress(Exception):
            thread.join(timeout=5)
