"""Metrics, checked against numbers worked out by hand: loss, accuracy, per-class and averaged scores, confusion."""

import pytest
import torch

from mnist_cnn import format_metrics
from mnist_cnn.evaluation import metrics_from_logits


def test_metrics_by_hand():
    # 6 images: true 0,0,0,1,1,2; predicted 0,0,1,1,2,2 (logits put 5 on the predicted class)
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 1, 2, 2]), 3).double() * 5
    m = metrics_from_logits(logits, y)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]  # rows true, columns predicted
    assert (m["count"], m["errors"], m["accuracy"]) == (6, 2, 4 / 6)
    assert m["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item())
    precision, recall = [1, 1 / 2, 1 / 2], [2 / 3, 1 / 2, 1]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    for key, expected in (("precision", precision), ("recall", recall), ("f1", f1), ("support", [3, 2, 1])):
        assert [r[key] for r in m["per_class"]] == pytest.approx(expected)
    assert m["macro"] == pytest.approx({"precision": 2 / 3, "recall": 13 / 18, "f1": sum(f1) / 3})
    assert m["weighted"]["recall"] == pytest.approx(4 / 6)  # weighted recall is accuracy
    assert m["weighted"]["precision"] == pytest.approx((3 * 1 + 2 * 0.5 + 1 * 0.5) / 6)
    assert "   macro" in format_metrics(m) and "weighted" in format_metrics(m)


def test_a_class_never_predicted_has_precision_zero_as_in_scikit_learn():
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1]), 3).float()
    m = metrics_from_logits(logits, torch.tensor([0, 1, 2]))  # class 2 is never predicted
    assert [r["precision"] for r in m["per_class"]] == [1.0, 0.5, 0.0]
    assert m["macro"]["precision"] == pytest.approx(0.5)


def test_evaluate_takes_a_run_or_model_and_images_as_mnist_holds_them_and_refuses_the_rest(trained_run, mnist):
    import numpy as np

    from mnist_cnn import MnistCnnError, evaluate

    x, y = mnist.x_test[:200], mnist.y_test[:200]
    expected = evaluate(trained_run.model, x, y)
    for same in [(trained_run, x, y), (trained_run.model, x.numpy(), y.numpy()),
                 (trained_run.model, x[:, None].float() / 255, y.to(torch.uint8)),
                 (trained_run.model, x.float() / 255, y),  # [N, H, W] floats: the channel axis is implied
                 (trained_run.model, x[..., None].numpy(), np.eye(10)[y.numpy()]),  # Keras's NHWC and one-hot
                 (trained_run.model, x.tolist(), y.tolist())]:
        assert evaluate(*same)["accuracy"] == expected["accuracy"]
    probs = trained_run.predict_proba(x)  # uint8 as MnistData holds them, like the model's own input
    assert torch.allclose(probs, trained_run.predict_proba(x[:, None].float() / 255))
    for args, message in [((trained_run.model, x[:, None].float(), y), r"float images must be in \[0, 1\], got "
                                                                       r"values in \[0, 255\]: divide 0\.\.255"),
                          ((trained_run.model, torch.full((200, 1, 28, 28), float("nan")), y),
                           r"float images must be in \[0, 1\], got values in \[nan, nan\]$"),
                          ((trained_run.model, x[:, :, None], y), r"x has shape \[200, 28, 1, 28\]: expected "
                                                                  r"28x28 images \[N, 1, H, W\], \[N, H, W, 1\]"),
                          ((trained_run.model, x, y.float()), r"y: labels must be one integer per image \[N\] or "
                                                              r"one-hot \[N, C\], got torch\.float32"),
                          ((trained_run.model, x, y[:100]), r"100 labels for 200 images"),
                          ((trained_run.model, x[:0], y[:0]), r"0 labels for 0 images: expected as many, and at least"),
                          ((trained_run.model, x, y + 1), r"labels must be 0\.\.9, got values in \[1, 10\]"),
                          ((str(trained_run.path), x, y), r"expected a model \(a torch nn\.Module, e\.g\. run\.model\) "
                                                          r"or a Run; a run directory's path is read with "
                                                          r"mnist_cnn\.sources"),
                          ((trained_run.model, np.eye(10)[y.numpy()], y), r"x has shape \[200, 10\]: expected 28x28")]:
        with pytest.raises(MnistCnnError, match=message):
            evaluate(*args)
