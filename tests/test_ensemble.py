"""Ensembles: two copies of one model predict as the model, files round-trip exactly, the CLI writes a dir."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from mnist_cnn import MnistCnnError, build_model, evaluate, get_spec, make_config, to_float
from mnist_cnn.cli import main
from mnist_cnn.ensemble import (
    DEFAULT_SHIFTS,
    ENSEMBLE_FILE,
    EnsembleModel,
    ensemble_of,
    ensemble_runs,
    evaluate_ensemble,
    load_ensemble,
    load_ensemble_model,
    member_config,
    members_data,
    reuse_or_train,
    save_ensemble,
    shift_images,
    train_members,
)
from mnist_cnn.runs import Run, save_weights
from mnist_cnn.sources import open_model


def _model(name="keras-basic", seed=0):
    torch.manual_seed(seed)
    return build_model(get_spec(name)).eval()


@pytest.fixture(scope="module")
def x(mnist):
    return to_float(mnist.x_test[:100])


def test_two_copies_predict_exactly_as_the_model(mnist, x):
    model = _model()
    for ens in (ensemble_of([model, model]), ensemble_of([model, copy.deepcopy(model)])):
        assert torch.equal(ens.predict_proba(x), model.predict_proba(x))
        assert torch.equal(ens.predict_proba(mnist.x_test[:100]), model.predict_proba(x))  # uint8, as MnistData
        assert torch.equal(ens(x).argmax(1), model(x).argmax(1))
        got, want = evaluate(ens, mnist.x_test[:200], mnist.y_test[:200]), evaluate(model, mnist.x_test[:200],
                                                                                    mnist.y_test[:200])
        assert got["accuracy"] == want["accuracy"] and got["confusion"] == want["confusion"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_ensemble_averages_member_softmax(x):
    a, b = _model(seed=1), _model("keras-bn", seed=2)
    ens = ensemble_of([a, b])
    expected = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
    assert torch.allclose(ens.predict_proba(x), expected, atol=1e-6)
    assert torch.allclose(torch.softmax(ens(x), 1), expected, atol=1e-6)  # forward is usable as logits


def test_save_load_round_trip_is_exact(tmp_path, x):
    ens = ensemble_of([_model(seed=1), _model("mlp", seed=2), _model(seed=1)], tta=True,
                      sources=["a", "b", "c"])
    path = save_ensemble(tmp_path / "ens", ens)
    assert path.name == ENSEMBLE_FILE and len(list(tmp_path.rglob("*.safetensors"))) == 1
    loaded = load_ensemble_model(tmp_path / "ens")
    assert loaded.shifts == DEFAULT_SHIFTS and loaded.sources == ["a", "b", "c"]
    assert torch.equal(loaded.predict_proba(x), ens.predict_proba(x))
    opened = open_model(tmp_path / "ens")
    assert opened.name.startswith("ensemble-3x") and torch.equal(opened.predict_proba(x), ens.predict_proba(x))


def test_shift_images_moves_pixels_and_fills_zero():
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 2] = 1.0
    right, up = shift_images(img, 1, 0), shift_images(img, 0, -1)
    assert right[0, 0, 2, 3] == 1 and right.sum() == 1
    assert up[0, 0, 1, 2] == 1 and up.sum() == 1
    edge = torch.ones(1, 1, 5, 5)
    assert shift_images(edge, -2, 0)[0, 0, :, 3:].sum() == 0 and shift_images(edge, 0, 0) is edge


def test_bad_files_and_arguments_give_clear_errors(tmp_path):
    with pytest.raises(MnistCnnError, match="at least one member"):
        EnsembleModel([])
    with pytest.raises(MnistCnnError, match="pairs of integers"):
        EnsembleModel([_model()], shifts=[(1.5, 0)])
    with pytest.raises(MnistCnnError, match="not an ensemble"):
        load_ensemble(tmp_path)
    save_weights(tmp_path / "single.safetensors", _model())
    with pytest.raises(MnistCnnError, match="no ensemble description"):
        load_ensemble_model(tmp_path / "single.safetensors")
    save_ensemble(tmp_path / "e", ensemble_of([_model()]))
    raw = bytearray((tmp_path / "e" / ENSEMBLE_FILE).read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "e" / ENSEMBLE_FILE).write_bytes(bytes(raw))
    with pytest.raises(MnistCnnError, match="damaged"):
        load_ensemble(tmp_path / "e")


@pytest.fixture(scope="module")
def members(mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("members")
    config = make_config(model="keras-basic", epochs=1, limit_train=700, val_size=200, limit_test=300, verbose=0)
    return out, config, train_members(config, 2, data=mnist, out=out, log=lambda *_: None)


def test_train_members_uses_seeds_and_reuses_finished_runs(members, mnist):
    out, config, runs = members
    assert [r.config["seed"] for r in runs] == [0, 1]
    assert all(isinstance(r, Run) and (r.path / "model.safetensors").exists() for r in runs)
    assert not torch.equal(runs[0].model.layers[0][0].weight, runs[1].model.layers[0][0].weight)
    said = []
    again = train_members(config, 2, data=mnist, out=out, log=said.append)
    assert sum("reusing" in s for s in said) == 2 and [r.path for r in again] == [r.path for r in runs]


def test_evaluate_ensemble_reports_members_test_and_validation(members, mnist):
    _, _, runs = members
    _, metrics = evaluate_ensemble(runs, data=mnist, limit_test=300, log=lambda *_: None)
    assert metrics["size"] == 2 and metrics["count"] == 300 and len(metrics["members"]) == 2
    assert set(metrics["validation"]) >= {"ensemble", "ensemble_tta", "members"}
    assert metrics["validation"]["count"] == 200
    with pytest.raises(MnistCnnError, match=r"seed-0 is given twice: an ensemble's members are different runs"):
        evaluate_ensemble([runs[0], runs[1], runs[0]], data=mnist, limit_test=300, log=lambda *_: None)
    with pytest.raises(MnistCnnError, match=r"seed-1 is given twice"):  # the Python API's way in, too
        ensemble_runs([runs[1].path, runs[0].path, runs[1].path / ".." / "seed-1"])


def test_weights_files_side_by_side_are_different_members(members, tmp_path):
    _, _, runs = members
    for i, run in enumerate(runs):
        save_weights(tmp_path / f"w{i}.safetensors", run.model)
    model = ensemble_runs([tmp_path / "w0.safetensors", tmp_path / "w1.safetensors"])
    assert model.sources == [str(tmp_path / "w0.safetensors"), str(tmp_path / "w1.safetensors")]


def test_a_run_loaded_once_serves_every_api_as_its_directory_does(members):
    _, _, runs = members
    assert open_model(runs[0]) is runs[0] and open_model(runs[0].model).model is runs[0].model
    assert open_model(runs[0].path).name == "keras-basic"
    with pytest.raises(MnistCnnError, match=r"expected a model \(a torch nn.Module, e.g. run.model\), a Run or an "
                                            r"EnsembleRun, or a run or ensemble directory, got dict"):
        open_model({"model": "keras-basic"})


def test_python_gets_the_cli_ensemble_checks_and_default_recipe(members):
    _, _, runs = members
    other = dataclasses.replace(runs[1], config={**runs[1].config, "data": "elsewhere.npz"})
    for refused in (lambda: members_data([runs[0], other]), lambda: evaluate_ensemble([runs[0], other])):
        with pytest.raises(MnistCnnError, match=r"^the runs were trained on different data \(elsewhere\.npz, the "
                                                r"bundled MNIST\); ensemble runs of one data set"):
            refused()
    assert member_config(epochs=1).recipe == "best" and member_config(model="mlp", epochs=1).recipe is None


def test_cli_ensemble_writes_a_loadable_dir(members, mnist, tmp_path, capsys):
    _, _, runs = members
    out = tmp_path / "ens"
    assert main(["ensemble", str(runs[0].path), str(runs[1].path), "--out", str(out), "--tta",
                 "--limit-test", "300", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((out / "metrics.json").read_text())
    assert printed["accuracy"] == saved["accuracy"] and saved["tta"] is True
    ens = load_ensemble(out)
    assert ens.model.tta and ens.metrics["accuracy"] == saved["accuracy"]
    assert main(["ensemble", "--out", str(tmp_path / "none")]) == 2
    # an ensemble is not a run (report and explain show one model), and a run's folder is not an ensemble's --out
    assert main(["report", str(out)]) == 2
    assert ("is an ensemble directory, not a run directory: evaluate, predict, export and serve take it; report and "
            "explain take one of its members") in capsys.readouterr().err
    assert main(["ensemble", str(runs[0].path), "--out", str(runs[1].path), "--limit-test", "100"]) == 2
    assert "holds a training run; write the ensemble to another --out" in capsys.readouterr().err
    assert (runs[1].path / "model.safetensors").exists() and "kind" not in json.loads(
        (runs[1].path / "config.json").read_text())
    # refused before training a member (not hours later, leaving it inside the other run) or evaluating one
    (tmp_path / "afile").write_text("mine")
    for out_dir in (runs[1].path, tmp_path / "afile"):
        said = []
        with pytest.raises(MnistCnnError, match="holds a training run|afile is a file, not a folder"):
            train_members(make_config(model="keras-basic", epochs=1, limit_train=300, verbose=0), 1, data=mnist,
                          out=out_dir, log=said.append)
        assert not said and not (runs[1].path / "members").exists()
    assert main(["ensemble", "--train", "1", "--out", str(tmp_path / "afile"), "--limit-train", "300"]) == 2
    assert "afile is a file, not a folder" in capsys.readouterr().err


def test_cli_ensemble_refuses_runs_of_different_data_and_records_the_members_data(members, mnist, tmp_path, capsys):
    _, _, runs = members
    np.savez(tmp_path / "small.npz", x_train=mnist.x_train[:300].numpy(), y_train=mnist.y_train[:300].numpy(),
             x_test=mnist.x_test[:100].numpy(), y_test=mnist.y_test[:100].numpy())
    other = tmp_path / "other"
    assert main(["train", "--data", str(tmp_path / "small.npz"), "--epochs", "1", "--out", str(other)]) == 0
    assert main(["ensemble", str(runs[0].path), str(other), "--out", str(tmp_path / "mixed")]) == 2
    assert (f"the runs were trained on different data ({tmp_path / 'small.npz'}, the bundled MNIST)"
            in capsys.readouterr().err)
    # a member trained beside a given run takes that run's data, and says so in its config
    assert main(["ensemble", str(other), "--train", "1", "--model", "keras-basic", "--epochs", "1",
                 "--out", str(tmp_path / "ens")]) == 0
    member = json.loads((tmp_path / "ens" / "members" / "seed-0" / "config.json").read_text())
    assert member["data"] == str(tmp_path / "small.npz")
    # the ensemble records that data too: evaluating it tests the same 100 images, not the bundled MNIST's
    assert json.loads((tmp_path / "ens" / "config.json").read_text())["data"] == str(tmp_path / "small.npz")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "ens"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["count"] == 100 and evaluated["accuracy"] == json.loads(
        (tmp_path / "ens" / "metrics.json").read_text())["accuracy"]


def test_a_member_folder_is_resumed_when_interrupted_and_replaced_when_its_config_changed(mnist, tmp_path):
    config = make_config(model="keras-basic", epochs=1, limit_train=300, limit_test=100, verbose=0,
                         out=str(tmp_path / "m"))
    first = reuse_or_train(config, data=mnist)
    for name in ("model.safetensors", "metrics.json"):  # as if killed after the last checkpoint
        (tmp_path / "m" / name).unlink()
    resumed = reuse_or_train(config, data=mnist)
    assert resumed.metrics == first.metrics
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(),
                                                   first.model.state_dict().values()))
    other = reuse_or_train(dataclasses.replace(config, seed=1), data=mnist)  # a new seed: a new run, same folder
    assert other.config["seed"] == 1 and len(other.history) == 1
    assert not torch.equal(other.model.layers[0][0].weight, first.model.layers[0][0].weight)


def test_a_member_folder_is_retrained_when_its_spec_file_was_edited(mnist, tmp_path):
    spec = tmp_path / "mlp.json"
    spec.write_text(json.dumps({"layers": [{"type": "Flatten"}, {"type": "Dense", "units": 32, "activation": "relu"},
                                           {"type": "Dense", "units": 10}]}))
    config = make_config(model=str(spec), epochs=1, limit_train=300, limit_test=100, verbose=0,
                         out=str(tmp_path / "m"), validation_split=0.0)
    said = []
    assert reuse_or_train(config, data=mnist, log=said.append).model.layers[1][0].out_features == 32
    spec.write_text(spec.read_text().replace("32", "16"))  # same config, same path, another architecture
    assert reuse_or_train(config, data=mnist, log=said.append).model.layers[1][0].out_features == 16
    assert not any("reusing" in s for s in said)
    reuse_or_train(config, data=mnist, log=said.append)  # unchanged since: reused
    assert "reusing" in said[-1]


@pytest.fixture(scope="module")
def ensemble_dir(members, tmp_path_factory):
    """An ensemble of the two members with TTA, written by the CLI."""
    _, _, runs = members
    out = tmp_path_factory.mktemp("ensemble") / "ens"
    assert main(["ensemble", str(runs[0].path), str(runs[1].path), "--out", str(out), "--tta",
                 "--limit-test", "300"]) == 0
    return out


def test_an_ensemble_directory_is_evaluated_and_predicted_like_a_run(members, ensemble_dir, mnist, tmp_path,
                                                                    monkeypatch, capsys):
    _, _, runs = members
    config = json.loads((ensemble_dir / "config.json").read_text())
    assert config["members"] == [str(r.path.absolute()) for r in runs] and config["limit_test"] == 300
    monkeypatch.chdir(tmp_path)  # opened from another folder than the one it was made in
    capsys.readouterr()
    assert main(["evaluate", str(ensemble_dir), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    saved = json.loads((ensemble_dir / "metrics.json").read_text())
    assert evaluated["model"] == "ensemble-2xkeras-basic-tta" and evaluated["count"] == 300
    assert evaluated["accuracy"] == saved["accuracy"] and evaluated["confusion"] == saved["confusion"]
    from PIL import Image

    from mnist_cnn.preprocess import load_image

    Image.fromarray(mnist.x_test[0].numpy()).resize((112, 112)).save(tmp_path / "digit.png")
    assert main(["predict", str(ensemble_dir), "digit.png", "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)[0]
    expected = load_ensemble(ensemble_dir).predict_proba(load_image("digit.png"))[0]
    assert np.allclose(predicted["probabilities"], expected.numpy(), atol=1e-6)
    assert predicted["digit"] == int(expected.argmax())  # members of 500 images at 45%: parity, not accuracy
    broken = tmp_path / "broken"  # an ensemble folder that lost its weights file is still named as an ensemble
    broken.mkdir()
    (broken / "config.json").write_bytes((ensemble_dir / "config.json").read_bytes())
    assert main(["evaluate", str(broken)]) == 2
    assert f"{broken} is an ensemble directory without its ensemble.safetensors" in capsys.readouterr().err


def test_an_ensemble_exports_as_one_onnx_or_torchscript_graph(ensemble_dir, mnist, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="ONNX checks need the 'export' extra")
    from mnist_cnn.export import run_exported

    ens = load_ensemble(ensemble_dir)
    x = mnist.x_test[:64]
    expected = ens.predict_proba(to_float(x)).numpy()
    for name in ("ens.onnx", "ens.pt"):
        assert main(["export", str(ensemble_dir), "--out", str(tmp_path / name), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["max_abs_diff_1000_test_images"] < 1e-4
        probabilities = torch.softmax(torch.from_numpy(run_exported(tmp_path / name, x)), 1).numpy()
        assert np.allclose(probabilities, expected, atol=1e-5)  # all 2 members x 5 shifts are in the graph
    assert main(["export", str(ensemble_dir), "--out", str(tmp_path / "ens.safetensors")]) == 2
    assert f"{ensemble_dir / ENSEMBLE_FILE} already holds it; export it as .onnx or .pt" in capsys.readouterr().err
    assert not (tmp_path / "ens.safetensors").exists()


def test_an_ensemble_directory_is_served(ensemble_dir):
    pytest.importorskip("fastapi", reason="the service needs the 'serve' extra")
    import warnings

    from mnist_cnn.serve import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    client = TestClient(create_app(ensemble_dir))
    model = client.get("/healthz").json()["model"]
    assert model == {"name": "ensemble-2xkeras-basic-tta", "run": "ens", "params": 2 * 93_322,
                     "test_accuracy": json.loads((ensemble_dir / "metrics.json").read_text())["accuracy"]}
    x = np.zeros((28, 28), np.uint8)
    got = client.post("/v1/predict", json={"images": [x.tolist()], "value_range": "byte"}).json()
    expected = load_ensemble(ensemble_dir).predict_proba(torch.zeros(1, 1, 28, 28))[0]
    assert np.allclose(got["predictions"][0]["probabilities"], expected.numpy(), atol=1e-6)
