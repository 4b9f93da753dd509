"""Metrics, checked against numbers worked out by hand: loss, accuracy, per-class and averaged scores, confusion."""

import pytest
import torch

from mnist_cnn import format_metrics
from mnist_cnn.evaluate import metrics_from_logits


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
