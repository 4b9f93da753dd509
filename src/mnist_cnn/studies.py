"""Optuna studies as the record of a search or a grid: where they are stored, what they record, worker safety.

A study lives in a storage that any number of worker processes open at once: a local SQLite file by default,
a PostgreSQL database (`postgresql://user:password@host/db`) for workers on several machines. Each worker
runs trials until the study's budget is spent. A worker killed mid-trial stops sending its heartbeat: the next
worker to start a trial marks it failed and queues a retry with the same settings, so a killed trial is never
counted. The study records the data (source and checksum), the code version and every trial's full config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MnistCnnError

if TYPE_CHECKING:
    import optuna

    from .data import MnistData

HEARTBEAT_SECONDS = 60  # a worker's trial counts as dead after two heartbeats without news
MAX_RETRIES = 2  # a trial whose worker died is run again at most this often


def optuna_module() -> Any:
    """optuna, or one line saying how to install it."""
    try:
        import optuna
    except ModuleNotFoundError as e:
        raise MnistCnnError(f"tune and experiment need the 'tune' extra ({e.name} is not installed): "
                            "pip install 'mnist-cnn[tune]'") from None
    return optuna


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's log off while a study runs (we print our own lines, and a user's error as one line), as it was
    afterwards."""
    logger = logging.getLogger("optuna")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def public_url(url: str) -> str:
    """The storage URL without its password, for logs and records."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: open_study says why; never echo what may be a secret
        return url.split("@")[-1]


def _engine_url(url: str) -> str:
    """postgresql:// with the psycopg (3) driver, which the 'tune' extra installs; SQLAlchemy's default is psycopg2."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


def open_study(storage: str | None, name: str, *, direction: str, sampler: Any, pruner: Any = None,
               heartbeat: int = HEARTBEAT_SECONDS) -> optuna.Study:
    """Create the study `name` in `storage` (an RDB URL; None: in memory), or join it if it exists."""
    optuna = optuna_module()
    rdb = None
    if storage is not None:
        from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

        sqlite = storage.startswith("sqlite")
        for attempt in range(3):
            try:  # a locked SQLite file waits for the other worker instead of failing at once
                with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna since 2.x
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    rdb = RDBStorage(_engine_url(storage), heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                                     heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(MAX_RETRIES),
                                     engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {})
                break
            except Exception as e:  # SQLAlchemy's and the drivers' errors: no connection, bad URL, no driver
                if attempt == 2:
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise MnistCnnError(f"--storage {public_url(storage)}: cannot open it ({reason})") from None
                # two workers making a new database's tables at once: one fails, and finds them made a moment later
                time.sleep(1 + attempt)
    with quiet_optuna():
        return optuna.create_study(storage=rdb, study_name=name, direction=direction, sampler=sampler,
                                   pruner=pruner, load_if_exists=True)


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{(folder / 'study.db').resolve()}"


def claim_record(study: optuna.Study, key: str, value: Any, what: str) -> None:
    """Record `value` under `key` in the study; a study that already holds another value belongs to another
    search: refuse to mix them."""
    held = study.user_attrs.get(key)
    if held is None:
        study.set_user_attr(key, value)
    elif json.loads(json.dumps(held)) != json.loads(json.dumps(value)):
        raise MnistCnnError(f"study {study.study_name!r} in this storage was started from a different {what}; "
                            "give the search another name, or another --storage")


def data_record(data: MnistData) -> dict[str, Any]:
    """Where the data came from and a SHA-256 of its images and labels (a fraction of a second for MNIST)."""
    digest = hashlib.sha256()
    for tensor in (data.x_train, data.y_train, data.x_test, data.y_test):
        digest.update(tensor.contiguous().numpy().tobytes())
    return {"source": data.source, "sha256": digest.hexdigest(), "train": len(data.x_train), "test": len(data.x_test)}


def code_record() -> dict[str, Any]:
    """The package's version, and `git describe` of its source tree where it runs from a git checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("mnist-cnn")
    except PackageNotFoundError:
        package = None
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=Path(__file__).parent,
                                   capture_output=True, text=True, timeout=10, check=False)
        git = described.stdout.strip() if described.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        git = None
    return {"version": package, "git": git}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def trials_in(study: optuna.Study, *states: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials in these states ('COMPLETE', 'PRUNED', 'RUNNING', ...), by number."""
    from optuna.trial import TrialState

    wanted = tuple(TrialState[s] for s in states)
    return sorted(study.get_trials(deepcopy=False, states=wanted), key=lambda t: t.number)
