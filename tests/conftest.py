"""Shared fixtures: the bundled MNIST, a small trained run and a local server, each made once per session."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import torch

from mnist_cnn import load_mnist

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def mnist():
    return load_mnist()


@pytest.fixture(scope="session")
def trained_run(mnist, tmp_path_factory):
    """A small trained run (keras-basic, 1 epoch on 3,000 images): good enough to tell a '1'."""
    from mnist_cnn.training import TrainConfig, train

    out = tmp_path_factory.mktemp("trained-run") / "run"
    config = TrainConfig(model="keras-basic", epochs=1, limit_train=3000, limit_test=1000, out=str(out), verbose=0)
    return train(config, mnist, log=lambda *_: None)


@pytest.fixture(scope="session")
def start_server():
    """Start an ASGI app with uvicorn on 127.0.0.1 (a free port) in a thread: call with the app (and any
    uvicorn.Config keywords), get its base URL; every server started is stopped at the end of the session."""
    uvicorn = pytest.importorskip("uvicorn", reason="the service needs the 'serve' extra")

    servers = []

    def start(app, **options) -> str:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", **options)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        servers.append((server, thread))
        port = server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        with contextlib.suppress(Exception):
            thread.join(timeout=5)
