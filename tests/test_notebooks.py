"""The tutorial notebooks in notebooks/ run top to bottom (any cell error fails), and their rendered HTML shows
figures as images, with no raw bytes and no traceback."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="the notebook tests need the 'test' extra (nbclient)")
nbformat = pytest.importorskip("nbformat")
nbconvert = pytest.importorskip("nbconvert")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
KERNEL = "mnist-cnn-tests"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory, monkeypatch_module):
    """A kernel spec that starts this very interpreter, in a folder of its own (nothing installed for the user)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mnist-cnn tests", "language": "python"}))
    monkeypatch_module.setenv("JUPYTER_PATH", str(root))
    monkeypatch_module.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return KERNEL


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_there_is_a_notebook_per_tutorial():
    assert [p.name[:3] for p in NOTEBOOKS] == ["000", "002", "003", "004"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_renders(path, kernel, tmp_path):
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(book, kernel_name=kernel, timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert figures, "no figure was shown"
    for out in outputs:
        text = out.get("data", {}).get("text/plain", "") + out.get("text", "")
        assert not re.search(r"<(Figure|matplotlib\.figure\.Figure) size", text) or "image/png" in out.get("data", {})
        assert "\\x89PNG" not in text and "b'\\x" not in text, text[:200]  # PNG bytes dumped as text

    html, _ = nbconvert.HTMLExporter().from_notebook_node(book)
    (tmp_path / f"{path.stem}.html").write_text(html, encoding="utf-8")
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', html)) >= len(figures)
    for bad in ("Traceback (most recent call last)", "\\x89PNG", "&lt;Figure size", "MnistCnnError"):
        assert bad not in html, bad
