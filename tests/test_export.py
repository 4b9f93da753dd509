"""ONNX / TorchScript / safetensors exports: each loads without our package and matches PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mnist_cnn.errors import MnistCnnError
from mnist_cnn.export import check_parity, export_model, format_for, run_exported
from mnist_cnn.runs import load_run

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def first_1000(mnist):
    return mnist.x_test[:1000]


def pytorch_logits(run, x):
    with torch.inference_mode():
        return run.model(x.float().div(255).unsqueeze(1)).numpy()


def test_onnx_runs_in_onnxruntime_with_any_batch_and_matches(trained_run, first_1000, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    path = export_model(trained_run, "onnx", tmp_path / "model.onnx")
    assert check_parity(trained_run, path, first_1000) < TOLERANCE

    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["spec"])["name"] == trained_run.name

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    for n in (1, 7):  # the batch axis is dynamic
        x = first_1000[:n]
        logits, probabilities = session.run(None, {"image": x.float().div(255).unsqueeze(1).numpy()})
        assert logits.shape == probabilities.shape == (n, 10)
        np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
        assert np.abs(logits - pytorch_logits(trained_run, x)).max() < TOLERANCE


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_loads_with_plain_torch_and_matches(trained_run, first_1000, tmp_path):
    path = export_model(trained_run, "torchscript", tmp_path / "model.pt")
    assert check_parity(trained_run, path, first_1000) < TOLERANCE
    extra = {"spec.json": ""}
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    assert json.loads(extra["spec.json"])["name"] == trained_run.name
    with torch.inference_mode():
        out = module(first_1000[:5].float().div(255).unsqueeze(1))
    assert np.abs(out.numpy() - pytorch_logits(trained_run, first_1000[:5])).max() < TOLERANCE


def test_safetensors_reloads_and_carries_its_spec(trained_run, first_1000, tmp_path):
    from safetensors import safe_open

    path = export_model(trained_run, None, tmp_path / "weights.safetensors")  # format from the suffix
    assert check_parity(trained_run, path, first_1000) < TOLERANCE
    (tmp_path / "metrics.json").write_text("[1, 2]")  # a project's own files beside it are not the weights' run
    (tmp_path / "history.json").write_text('["v1"]')
    assert load_run(path).num_params == trained_run.num_params and load_run(path).metrics == {}
    with safe_open(str(path), "pt") as f:  # readable without this package
        spec = json.loads(f.metadata()["spec"])
        keys = set(f.keys())
    assert spec["name"] == trained_run.name and keys == set(trained_run.model.state_dict())


def test_export_from_a_run_directory_and_bad_formats(trained_run, tmp_path):
    path = export_model(trained_run.path, "torchscript", tmp_path / "m.ts")
    assert run_exported(path, np.zeros((2, 28, 28), np.uint8)).shape == (2, 10)
    with pytest.raises(MnistCnnError, match="unknown export format 'tflite'"):
        export_model(trained_run, "tflite", tmp_path / "m.tflite")
    with pytest.raises(MnistCnnError, match="cannot tell the format"):
        format_for(tmp_path / "model.bin")
    with pytest.raises(MnistCnnError, match="no-such-run does not exist: expected a run or ensemble directory"):
        export_model(tmp_path / "no-such-run", "onnx", tmp_path / "x.onnx")
    with pytest.raises(MnistCnnError, match=r"cannot export Sequential: expected a run or ensemble .*, a SpecModel or"):
        export_model(torch.nn.Sequential(trained_run.model), "onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "m.tflite").exists() and not (tmp_path / "x.onnx").exists()


def test_export_refuses_to_replace_the_runs_own_files(trained_run, tmp_path):
    # exporting "into" the run folder must not clobber the weights or checkpoints it is exporting
    before = (trained_run.path / "model.safetensors").read_bytes()
    for target in (trained_run.path / "model.safetensors", trained_run.path / "checkpoints" / "ckpt-x.safetensors"):
        with pytest.raises(MnistCnnError, match="one of the exported run's own files"):
            export_model(trained_run.path, "safetensors", target)
    assert (trained_run.path / "model.safetensors").read_bytes() == before
    beside = export_model(trained_run, "torchscript", trained_run.path / "model.pt")  # a new file beside them is fine
    assert beside.exists()
    beside.unlink()  # the run is shared by other tests
