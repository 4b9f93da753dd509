"""What training shows while it runs: in a notebook, one progress bar per epoch, updated in place (a saved notebook
keeps each epoch's final bar, not hundreds of lines); through a pipe (`!mnist-cnn ...` in a notebook, a log file),
one line per epoch and no '\\r'."""

from __future__ import annotations

import subprocess
import sys

import pytest

nbclient = pytest.importorskip("nbclient", reason="the notebook tests need the 'test' extra (nbclient)")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

# the notebook tests' kernel: one that starts this very interpreter
from test_notebooks import KERNEL, kernel, monkeypatch_module  # noqa: E402, F401

TRAIN = dict(limit_train=640, epochs=2, batch_size=32, limit_test=200)  # 20 steps an epoch: the bar is drawn twice


@pytest.mark.usefixtures("kernel")
def test_a_notebook_shows_one_bar_per_epoch_updated_in_place(tmp_path):
    options = ", ".join(f"{k}={v}" for k, v in TRAIN.items())
    cell = (f"from mnist_cnn.training import train\n"
            f"run = train(model='keras-basic', {options}, out={str(tmp_path / 'run')!r})")
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nbclient.NotebookClient(book, kernel_name=KERNEL, timeout=120).execute()
    outputs = book.cells[0].outputs

    bars = [out for out in outputs if out.output_type == "display_data"]
    assert len(bars) == 2  # one per epoch, each holding its final state
    for bar in bars:
        assert bar.data["text/plain"].startswith("20/20 [==============================] - ")
        assert "loss: " in bar.data["text/plain"] and "accuracy: " in bar.data["text/plain"]
        assert bar.data["text/html"].startswith("<pre>20/20 [")
    assert not [out for out in outputs if out.output_type == "stream" and "\r" in out.text]
    # each epoch's bar comes before its epoch's line (how print's text is split into outputs is the kernel's choice)
    shown = []
    for out in outputs:
        if out.output_type == "display_data":
            shown.append("bar")
        elif out.output_type == "stream" and out.name == "stdout":
            shown += [" ".join(line.split()[:2]) for line in out.text.splitlines()]
    assert shown == ["Training keras-basic", "bar", "Epoch 1/2", "bar", "Epoch 2/2", "Test accuracy:"], shown


def test_a_pipe_gets_one_line_per_epoch(tmp_path):
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TRAIN.items()]
    result = subprocess.run([sys.executable, "-m", "mnist_cnn", "train", *args, "--out", str(tmp_path / "cli")],
                            stdout=subprocess.PIPE, text=True, timeout=120, check=True)
    assert "\r" not in result.stdout
    lines = result.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["Training", "Epoch", "Epoch", "Test"], result.stdout
