"""tune: Optuna studies over training options, scored on the validation split, on SQLite and on a real PostgreSQL.

The PostgreSQL tests start a throwaway server (Debian's `postgresql` package: initdb + pg_ctl) and stop it at the
end; they are skipped, with the reason, where its programs are not installed.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mnist_cnn import MnistCnnError
from mnist_cnn.cli import main

optuna = pytest.importorskip("optuna", reason="tune needs the 'tune' extra (pip install 'mnist-cnn[tune]')")

from mnist_cnn.tune import check_search, load_search, tune  # noqa: E402

SMALL = """
name = "{name}"
trials = {trials}
prune = false
[base]
recipe = "fast"
epochs = {epochs}
limit_train = {limit_train}
val_size = 200
limit_test = 100
threads = 1
[search]
lr = {{low = 0.002, high = 0.05, log = true}}
label_smoothing = {{low = 0.0, high = 0.2}}
"""


def write_search(folder: Path, name: str, trials: int = 3, epochs: int = 1, limit_train: int = 600) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(SMALL.format(name=name, trials=trials, epochs=epochs, limit_train=limit_train))
    return path


def quiet(_message: str) -> None:
    pass


def study_of(url: str, name: str) -> optuna.Study:
    from mnist_cnn.studies import _engine_url

    return optuna.load_study(study_name=name, storage=_engine_url(url))


def test_a_study_on_sqlite_writes_a_recipe_that_train_reproduces(tmp_path, mnist, capsys):
    result = tune(write_search(tmp_path, "small"), out=tmp_path / "study", data=mnist, log=quiet)
    assert [row["state"] for row in result.trials] == ["COMPLETE"] * 3
    assert result.storage == f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    values = [row["value"] for row in result.trials]
    assert result.best["value"] == max(values) and result.best["trial"] == values.index(max(values))
    for row in result.trials:  # each trial is a normal run directory under the study folder
        assert row["run_dirs"] == [str(tmp_path / "study" / "trials" / f"trial-{row['trial']:04d}" / "seed-0")]
        assert (Path(row["run_dirs"][0]) / "model.safetensors").exists()
    # the storage is the record: the search, the data's checksum, the code, each trial's full config
    study = study_of(result.storage, "small")
    assert study.user_attrs["search"]["objective"] == "val_accuracy"
    assert len(study.user_attrs["data"]["sha256"]) == 64 and study.user_attrs["data"]["train"] == 60000
    assert study.user_attrs["data_source"] == mnist.source
    assert "version" in study.user_attrs["code"]
    config = study.trials[0].user_attrs["configs"][0]
    assert config["lr"] == study.trials[0].params["lr"] and config["limit_train"] == 600 and config["seed"] == 0
    assert (tmp_path / "study" / "trials.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "study" / "trials.json").read_text())["best"] == result.best
    assert set(result.importances) == {"lr", "label_smoothing"}

    # the best trial's recipe trains it again, to the same validation score
    recipe = json.loads(result.recipe.read_text())
    assert recipe["model"] == "fast-cnn" and recipe["lr"] == result.best["params"]["lr"] and "out" not in recipe
    assert main(["train", "--recipe", str(result.recipe), "--threads", "1", "--out", str(tmp_path / "again"),
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["history"][-1]["val_accuracy"] == result.best["value"]

    # the budget is the study's: run again, nothing is trained; a larger budget adds trials
    assert len(tune(write_search(tmp_path, "small"), out=tmp_path / "study", data=mnist, log=quiet).trials) == 3
    assert len(tune(write_search(tmp_path, "small"), out=tmp_path / "study", data=mnist, log=quiet,
                    trials=4).trials) == 4


def test_the_tune_command_prints_the_table(tmp_path, capsys):
    search = write_search(tmp_path, "cli", trials=1)
    assert main(["tune", str(search), "--out", str(tmp_path / "s"), "--trials", "1"]) == 0
    text = capsys.readouterr().out
    assert "cli: 1 trials in sqlite:///" in text and "best: trial 0" in text and "best_recipe.json" in text
    assert main(["tune", str(search), "--out", str(tmp_path / "s"), "--trials", "0"]) == 2
    assert "--trials must be a positive integer, got 0" in capsys.readouterr().err


def test_a_poor_trial_is_pruned_from_its_epoch_scores(tmp_path, mnist):
    from mnist_cnn.training import make_config, train
    from mnist_cnn.tune import _pruning

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    first = study.ask()
    _pruning(first, "val_accuracy")({"epoch": 1, "val_accuracy": 0.9})
    study.tell(first, 0.9)
    poor = study.ask()
    config = make_config(model="mlp", epochs=3, limit_train=500, val_size=100, limit_test=50, threads=1, verbose=0,
                         out=str(tmp_path / "poor"), lr=1e-7)
    with pytest.raises(optuna.TrialPruned, match=r"val_accuracy 0\.\d+ at epoch 1"):
        train(config, mnist, on_epoch=_pruning(poor, "val_accuracy"))
    # training stopped after its first epoch, whose row and checkpoint were written: the run is resumable
    assert len(json.loads((tmp_path / "poor" / "history.json").read_text())) == 1
    assert list((tmp_path / "poor" / "checkpoints").glob("ckpt-*.safetensors"))


def test_search_file_mistakes_are_one_line_naming_the_key(tmp_path):
    base = {"model": "mlp", "val_size": 100}
    with pytest.raises(MnistCnnError, match="unknown top-level key 'space'"):
        check_search({"base": base, "space": {}})
    with pytest.raises(MnistCnnError, match=r"search 'lr' needs numbers low < high, got low=0.1 high=0.01"):
        check_search({"base": base, "search": {"lr": {"low": 0.1, "high": 0.01}}})
    with pytest.raises(MnistCnnError, match=r"search 'lr': log = true needs low > 0"):
        check_search({"base": base, "search": {"lr": {"low": 0, "high": 0.1, "log": True}}})
    with pytest.raises(MnistCnnError, match=r"search 'seed': seed is fixed for a study"):
        check_search({"base": base, "search": {"seed": {"choices": [1, 2]}}})
    with pytest.raises(MnistCnnError, match="objective must be val_accuracy or val_loss"):
        check_search({"base": base, "objective": "test_accuracy", "search": {"lr": {"choices": [0.1]}}})
    with pytest.raises(MnistCnnError, match="scored on the validation split: set val_size or validation_split"):
        check_search({"base": {"model": "mlp"}, "search": {"lr": {"choices": [0.1]}}})
    with pytest.raises(MnistCnnError, match="unknown training option 'lrr'"):
        check_search({"base": base, "search": {"lrr": {"choices": [0.1]}}})
    with pytest.raises(MnistCnnError, match=r"cell lr=20: lr must be in \(0, 10\), got 20"):
        check_search({"base": base, "search": {"lr": {"low": 1e-3, "high": 20}}})
    with pytest.raises(MnistCnnError, match="choices must be a non-empty list"):
        check_search({"base": base, "search": {"model_options": {"dropout": {"choices": []}}}})
    space = check_search({"base": base, "search": {"epochs": {"low": 1, "high": 3}, "augment": {
        "rotation": {"low": 0.0, "high": 10.0}}}})["search"]
    assert space == {"epochs": {"low": 1, "high": 3, "log": False, "step": None, "int": True},
                     "augment.rotation": {"low": 0.0, "high": 10.0, "log": False, "step": None, "int": False}}
    (tmp_path / "s.yaml").write_text("base: {model: mlp, val_size: 100}\nsearch: {batch_size: {choices: [32, 64]}}\n")
    assert load_search(tmp_path / "s.yaml")["name"] == "s"


def test_a_recipe_file_is_checked_like_any_user_file(tmp_path):
    from mnist_cnn.training import make_config

    (tmp_path / "r.json").write_text('{"model": "mlp", "epochs": 2, "out": "elsewhere"}')
    with pytest.raises(MnistCnnError, match=r"r\.json: 'out' is not a training option a recipe may set"):
        make_config(recipe=tmp_path / "r.json")
    (tmp_path / "r.toml").write_text('model = "mlp"\nepochs = 2\nlr = 0.01\n')
    config = make_config(recipe=str(tmp_path / "r.toml"), epochs=3)
    assert (config.model, config.epochs, config.lr, config.recipe) == ("mlp", 3, 0.01, str(tmp_path / "r.toml"))
    with pytest.raises(MnistCnnError, match="unknown recipe 'r.txt'"):
        make_config(recipe="r.txt")


def _worker(search: Path, storage: str, out: Path, heartbeat: int = 60) -> subprocess.Popen:
    """A worker process, as a user starts one on another machine (heartbeat: seconds between signs of life)."""
    code = (f"from mnist_cnn.tune import tune; tune({str(search)!r}, storage={storage!r}, out={str(out)!r}, "
            f"heartbeat={heartbeat})")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_worker_killed_mid_trial_leaves_its_trial_failed_and_retried_not_counted(tmp_path, mnist):
    # epochs long enough (~0.5 s each) that the kill lands mid-trial, polled every 0.5 s, however fast the recipe
    search = write_search(tmp_path, "killed", trials=2, epochs=8, limit_train=8000)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    worker = _worker(search, storage, tmp_path / "w1", heartbeat=1)
    deadline = time.monotonic() + 300
    running = None
    while running is None:  # wait until a trial has trained an epoch, then kill its worker without warning
        assert worker.poll() is None and time.monotonic() < deadline, worker.stdout.read() if worker.poll() else ""
        time.sleep(0.5)
        if "killed" in optuna.get_all_study_names(storage):
            trials = study_of(storage, "killed").get_trials(states=(optuna.trial.TrialState.RUNNING,))
            running = next((t for t in trials if t.user_attrs.get("run_dirs") and
                            (Path(t.user_attrs["run_dirs"][0]) / "history.json").exists()), None)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert study_of(storage, "killed").trials[running.number].state == optuna.trial.TrialState.RUNNING
    time.sleep(3)  # two heartbeats without news: the trial is stale
    result = tune(search, storage=storage, out=tmp_path / "w2", data=mnist, log=quiet, heartbeat=1)
    states = {row["trial"]: row["state"] for row in result.trials}
    assert states[running.number] == "FAIL"
    retry = next(row for row in result.trials if row["retry_of"] == running.number)
    assert retry["state"] == "COMPLETE" and retry["params"] == running.params
    assert retry["run_dirs"][0].startswith(str(tmp_path / "w2"))
    assert sum(state == "COMPLETE" for state in states.values()) == 2  # the budget; the killed trial is not counted


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for this test session: initdb into a fresh folder, pg_ctl start on a free port, stop."""
    pytest.importorskip("psycopg", reason="PostgreSQL storage needs psycopg (pip install 'mnist-cnn[tune]')")
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if not found:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql): initdb not found")
    bindir = Path(found).resolve().parent
    folder = Path(tempfile.mkdtemp(prefix="mnist-cnn-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the package's own user
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        try:
            shutil.chown(folder, "postgres")
        except LookupError:
            pytest.skip("running as root and there is no 'postgres' user to start PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    subprocess.run([*as_user, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], check=False,
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_on_postgresql_finish_one_study_with_no_trial_run_twice(tmp_path, postgres):
    search = write_search(tmp_path, "two-workers", trials=6, limit_train=1500)
    workers = [_worker(search, postgres, tmp_path / f"machine-{k}") for k in (1, 2)]
    for worker in workers:
        output, _ = worker.communicate(timeout=900)
        assert worker.returncode == 0, output
    trials = study_of(postgres, "two-workers").get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # the budget is the study's: at most one trial more, started by a worker as the other finished the last
    assert 6 <= len(complete) <= 7 and len(complete) == len(trials)
    params = [tuple(sorted(t.params.items())) for t in complete]
    run_dirs = [t.user_attrs["run_dirs"][0] for t in complete]
    assert len(set(params)) == len(params) and len(set(run_dirs)) == len(run_dirs)
    assert {Path(d).parents[2].name for d in run_dirs} == {"machine-1", "machine-2"}  # both took trials
    assert all((Path(d) / "model.safetensors").exists() for d in run_dirs)
    assert len({t.user_attrs["worker"] for t in complete}) == 2


def test_two_experiment_workers_share_a_grid_cell_by_cell(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('name = "shared"\nseeds = 1\n[base]\nmodel = "mlp"\nepochs = 1\nlimit_train = 500\n'
                    'limit_test = 100\nthreads = 1\n[axes]\nlr = [0.001, 0.002, 0.003, 0.004]\n')
    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    command = [sys.executable, "-m", "mnist_cnn", "experiment", str(grid), "--storage", storage, "--out",
               str(tmp_path / "exp")]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in (1, 2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    started = [line.split("] ")[1] for out in outputs for line in out.splitlines() if line.startswith("[")]
    assert sorted(started) == [f"lr={lr} seed 0" for lr in ("0.001", "0.002", "0.003", "0.004")]  # each cell once
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert [c["label"] for c in results["cells"]] == ["lr=0.001", "lr=0.002", "lr=0.003", "lr=0.004"]
