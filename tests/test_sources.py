"""One way to open a model (mnist_cnn.sources), and runs written by older versions still opening."""

import json
from pathlib import Path

import pytest
import torch

from mnist_cnn import MnistCnnError, MnistData, evaluate, load_run, open_model
from mnist_cnn.cli import main
from mnist_cnn.ensemble import ensemble_of, write_ensemble
from mnist_cnn.export import export_checked
from mnist_cnn.predict import predict_arrays
from mnist_cnn.sources import ModelSource, ModuleSource

OLD_RUN = Path(__file__).parent / "fixtures" / "run-0e14a53"  # written by the code at commit 0e14a53


def test_a_run_written_by_0e14a53_loads_and_scores_what_it_recorded(mnist):
    recorded = json.loads((OLD_RUN / "metrics.json").read_text())
    x, y = mnist.x_test[:100], mnist.y_test[:100]
    for opened in (load_run(OLD_RUN), open_model(OLD_RUN), open_model(OLD_RUN / "model.safetensors")):
        assert opened.name == "small-bn" and opened.num_params == 27_274
        metrics = evaluate(opened, x, y)
        assert (metrics["accuracy"], metrics["errors"], metrics["confusion"]) == (
            recorded["accuracy"], recorded["errors"], recorded["confusion"])
        assert metrics["loss"] == pytest.approx(recorded["loss"], rel=1e-5)
    predicted = [r["digit"] for r in predict_arrays(OLD_RUN, x.numpy())]
    assert predicted == load_run(OLD_RUN).predict_proba(x).argmax(1).tolist()
    assert sum(p == t for p, t in zip(predicted, y.tolist())) == 100 - recorded["errors"]


def test_the_cli_evaluates_the_old_run_as_it_did(capsys):
    assert main(["evaluate", str(OLD_RUN), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["accuracy"] == json.loads((OLD_RUN / "metrics.json").read_text())["accuracy"]
    assert printed["count"] == 100  # the run's own limit_test, from its config.json


def test_every_source_opens_to_the_same_protocol_and_predicts_alike(trained_run, tmp_path, mnist):
    x = mnist.x_test[:50]
    ensemble = write_ensemble(tmp_path / "ens", ensemble_of([trained_run.model]), {})
    sources = [open_model(trained_run.path), open_model(trained_run), open_model(trained_run.model),
               open_model(ensemble), open_model(ensemble / "ensemble.safetensors")]
    expected = trained_run.predict_proba(x)
    for src in sources:
        assert isinstance(src, ModelSource) and src.num_params == trained_run.num_params
        for same in (x, x.numpy()[..., None], x[:, None].float() / 255):  # uint8 NHW, NHWC, NCHW float
            assert torch.allclose(src.predict_proba(same), expected, atol=1e-6)
    assert open_model(trained_run) is trained_run and isinstance(sources[2], ModuleSource)
    assert sources[2].path is None and sources[2].name == "keras-basic" and sources[3].path == ensemble
    assert sources[4].source == ensemble / "ensemble.safetensors"
    wrapped = open_model(torch.nn.Sequential(trained_run.model))  # any torch module predicts too
    assert wrapped.name == "Sequential" and torch.allclose(wrapped.predict_proba(x), expected, atol=1e-6)


def test_open_model_refuses_what_is_no_model_in_one_line(tmp_path):
    with pytest.raises(MnistCnnError, match=r"expected a model \(a torch nn.Module, e.g. run.model\), a Run or an "
                                            r"EnsembleRun, or a run or ensemble directory, got int$"):
        open_model(3)
    with pytest.raises(MnistCnnError, match=r"nope does not exist: expected a run or ensemble directory"):
        open_model(tmp_path / "nope")


def test_export_checked_gives_the_cli_numbers(trained_run, tmp_path, capsys, mnist):
    path, diff, count = export_checked(trained_run, tmp_path / "m.pt")
    assert path == tmp_path / "m.pt" and count == 1000 and diff < 1e-4
    assert main(["export", str(trained_run.path), "--out", str(tmp_path / "cli.pt"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"path": str(tmp_path / "cli.pt"), "format": "torchscript", "max_abs_diff_1000_test_images": diff}
    ten = MnistData(mnist.x_train[:0], mnist.y_train[:0], mnist.x_test[:10], mnist.y_test[:10], source="")
    assert export_checked(trained_run, tmp_path / "n.pt", data=ten)[2] == 10  # given data is measured instead
