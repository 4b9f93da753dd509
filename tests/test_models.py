"""Every named model: exact Keras parameter counts, output shapes, gradients everywhere, Keras-style summary."""

import copy

import numpy as np
import pytest
import torch

from mnist_cnn import MODELS, build_model, count_params, get_spec, layer_table, summary
from mnist_cnn.explain import feature_maps, saliency
from mnist_cnn.export import export_model, run_exported
from mnist_cnn.inputs import to_float
from mnist_cnn.predict import predict_arrays
from mnist_cnn.spec import parse_spec

# (total, non-trainable) as Keras's model.summary() prints them
KERAS_PARAMS = {
    "keras-basic": (93_322, 0),
    "keras-same": (121_994, 0),
    "keras-bn": (597_738, 1_408),
    "keras-dropout": (872_714, 0),
    "mlp": (407_050, 0),
}


def test_every_named_model_has_its_keras_count():
    assert set(KERAS_PARAMS) <= set(MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_model_shapes_params_and_gradients(name):
    spec = get_spec(name)
    total, trainable, fixed = count_params(spec)
    if name in KERAS_PARAMS:
        assert (total, fixed) == KERAS_PARAMS[name]
    assert total == trainable + fixed
    torch.manual_seed(0)
    model = build_model(spec).train()
    x = torch.rand(4, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (4, 10)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient for {pname}"
    assert sum(p.numel() for p in model.parameters()) == trainable


@pytest.mark.parametrize("name", list(MODELS))
def test_feature_shapes_match_summary(name):
    spec = get_spec(name)
    model = build_model(spec).eval()
    features = model.forward_features(torch.rand(2, 1, 28, 28))
    for row, f in zip(layer_table(spec), features):
        keras_shape = tuple(f.shape[1:]) if f.dim() == 2 else (f.shape[2], f.shape[3], f.shape[1])
        assert keras_shape == tuple(row["shape"]), row["name"]


def test_keras_dropout_options_change_the_count():
    assert count_params(get_spec("keras-dropout", kernel_size=3))[0] == 1_199_882
    assert count_params(get_spec("keras-dropout", dropout=False))[0] == 872_714
    assert not any(layer.type == "Dropout" for layer in get_spec("keras-dropout", dropout=False).layers)


def test_summary_reads_like_keras():
    text = summary(get_spec("keras-basic"))
    assert "conv2d (Conv2D)" in text and "(None, 26, 26, 32)" in text
    assert "dense_1 (Dense)" in text and "(None, 10)" in text
    assert "Total params: 93,322 (364.54 KB)" in text and "Non-trainable params: 0 (0.00 B)" in text
    assert "Non-trainable params: 1,408 (5.50 KB)" in summary(get_spec("keras-bn"))
    assert "(None, 28, 28, 32)" in summary(get_spec("keras-same"))


def test_softmax_is_applied_by_predict_proba_not_forward():
    model = build_model(get_spec("keras-basic")).eval()
    x = torch.rand(3, 1, 28, 28)
    probs = model.predict_proba(x)
    assert torch.allclose(probs.sum(1), torch.ones(3))
    assert torch.allclose(probs, torch.softmax(model(x), 1))
    assert torch.allclose(model.forward_features(x)[-1], probs, atol=1e-6)


def test_predicting_explaining_and_exporting_a_model_in_training_mode(tmp_path):
    # like Keras's predict: BatchNorm's running statistics and no dropout, and the caller's model stays in its mode
    model = build_model(get_spec("keras-bn"))  # a new module is in training mode
    images = torch.randint(0, 256, (4, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        expected = torch.softmax(copy.deepcopy(model).eval()(to_float(images)), 1)
    assert torch.allclose(model.predict_proba(to_float(images)), expected, atol=1e-6)
    predicted = np.array([r["probabilities"] for r in predict_arrays(model, images.numpy())])
    assert np.allclose(predicted, expected.numpy(), atol=1e-6)
    feature_maps(model, images[0])
    saliency(model, images[0])
    for name in ("model.safetensors", "model.pt", "model.onnx"):  # the exports hold the eval-mode graph
        path = export_model(model, None, tmp_path / name)
        if name != "model.safetensors":
            exported = torch.softmax(torch.from_numpy(run_exported(path, images)), 1)
            assert torch.allclose(exported, expected, atol=1e-5), name
    assert model.training


def test_batch_norm_keeps_keras_moving_statistics():
    # Keras: moving = momentum * moving + (1 - momentum) * batch statistic, with the batch's biased variance
    bn = build_model(get_spec("keras-bn")).layers[-4]  # the BatchNormalization after Dense(512)
    assert bn.momentum == pytest.approx(0.01)
    x = torch.randn(4, 512, generator=torch.Generator().manual_seed(0)) * 3 + 1
    bn.train()(x)
    assert torch.allclose(bn.running_mean, 0.01 * x.mean(0), atol=1e-6)
    assert torch.allclose(bn.running_var, 0.99 + 0.01 * x.var(0, correction=0), atol=1e-5)
    bn.running_var.zero_()  # from 0 and with a tiny variance, an eps (1e-3) left in the moving variance would show
    bn(x * 1e-3)
    assert torch.allclose(bn.running_var, 0.01 * (x * 1e-3).var(0, correction=0), rtol=1e-3, atol=0)
    assert torch.allclose(bn(x[:1]), bn.bias.expand(1, 512), atol=1e-4)  # a batch of one: normalised to zero, then beta


def test_same_padding_puts_the_odd_pixel_at_the_bottom_and_right_as_keras():
    # 5x5 stride 2 on 28 pads 3 pixels: Keras (TensorFlow) puts 1 above/left and 2 below/right, so the centre
    # tap of output (0, 0) reads input (1, 1)
    conv = {"type": "Conv2D", "filters": 1, "kernel_size": 5, "strides": 2, "padding": "same", "use_bias": False}
    model = build_model(parse_spec({"layers": [conv, {"type": "Flatten"}, {"type": "Dense", "units": 10}]}))
    weight = next(m for m in model.layers[0] if isinstance(m, torch.nn.Conv2d)).weight
    with torch.no_grad():
        weight.zero_()[0, 0, 2, 2] = 1.0
        x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        assert torch.equal(model.forward_features(x)[0], x[..., 1::2, 1::2])


def test_same_average_pooling_averages_only_the_cells_inside_the_image():
    # Keras leaves the padding out of each window's average, so a constant image stays constant
    pool = {"type": "AveragePooling2D", "pool_size": 3, "strides": 1, "padding": "same"}
    model = build_model(parse_spec({"layers": [pool, {"type": "Flatten"}, {"type": "Dense", "units": 10}]}))
    assert torch.allclose(model.forward_features(torch.ones(1, 1, 28, 28))[0], torch.ones(1, 1, 28, 28))
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    corner = model.forward_features(x)[0][0, 0, 0, 0]
    assert torch.isclose(corner, x[0, 0, :2, :2].mean())  # the 2x2 of the 3x3 window that lies in the image


@pytest.mark.parametrize("name", list(MODELS))
def test_the_reordered_forward_computes_what_the_keras_layer_order_computes(name):
    # forward() max-pools before a ReLU (fewer elements); forward_features() runs the layers as listed
    torch.manual_seed(0)
    model = build_model(get_spec(name))
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # training mode, but deterministic
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    fast = model(x).log_softmax(1)
    listed = model.forward_features(x)[-1]
    listed = listed.log() if model.softmax_output else listed.log_softmax(1)  # the listed path ends in the softmax
    assert torch.allclose(fast, listed, atol=1e-5)
    grads = [torch.autograd.grad(out[:, 3].sum(), list(model.parameters())) for out in (fast, listed)]
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(*grads))


def test_keras_initialisers():
    model = build_model(get_spec("keras-basic"))
    conv = model.layers[0][0]
    limit = (6 / (9 * 1 + 9 * 32)) ** 0.5  # Glorot-uniform: sqrt(6 / (fan_in + fan_out))
    assert conv.weight.abs().max() <= limit and conv.weight.abs().max() > 0.9 * limit
    assert torch.all(conv.bias == 0)
    bn = build_model(get_spec("keras-bn")).layers[1]
    assert bn.eps == 1e-3 and abs(bn.momentum - 0.01) < 1e-9  # Keras momentum 0.99, epsilon 1e-3


def test_conv_models_are_channels_last_and_predict_the_same_in_any_layout_or_batch(mnist):
    from mnist_cnn import predict_logits

    torch.manual_seed(0)
    model = build_model(get_spec("keras-basic")).eval()
    assert model.memory_format == torch.channels_last
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    assert build_model(get_spec("mlp")).memory_format == torch.contiguous_format
    x = mnist.x_test[:300]
    logits = predict_logits(model, x)
    assert torch.allclose(predict_logits(model, x, batch_size=7), logits, atol=1e-5)
    nchw = model.to(memory_format=torch.contiguous_format)
    nchw.memory_format = torch.contiguous_format
    assert torch.allclose(predict_logits(nchw, x), logits, atol=1e-5)


@pytest.mark.parametrize("rate", [0.2, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_drops_its_rate_scales_the_rest_and_passes_gradients_through_the_mask(rate, dtype):
    from mnist_cnn.models import Dropout

    drop = Dropout(rate)
    x = torch.ones(100_003, dtype=dtype, requires_grad=True)  # an odd size: the last 64-bit draw is only partly used
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    assert y.dtype == dtype and y.shape == x.shape
    assert abs(kept.float().mean().item() - (1 - rate)) < 0.005  # 5 standard deviations is about 0.0063
    assert torch.all(y[kept] == torch.tensor(1 / (1 - rate), dtype=dtype))  # inverted dropout, as Keras
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # gradient flows exactly where the mask kept
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # the mask comes from torch's generator: seeded runs repeat
    assert not torch.equal(drop(x), y)  # and the stream advances
    assert drop.eval()(x) is x


def test_summary_and_counts_take_what_a_keras_user_has_at_hand(trained_run):
    from mnist_cnn import MnistCnnError, load_run

    table = summary(get_spec("keras-basic"))
    for same in ("keras-basic", build_model("keras-basic"), trained_run, trained_run.model):
        assert summary(same) == table
    assert count_params(build_model(get_spec("mlp"))) == (407_050, 407_050, 0)
    assert load_run(trained_run) is trained_run  # a Run where a run directory is expected is taken as it is
    with pytest.raises(MnistCnnError, match=r"expected a ModelSpec, a model built from one, a Run, .*got int"):
        summary(3)
