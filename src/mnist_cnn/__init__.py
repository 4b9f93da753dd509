"""mnist-cnn: train, evaluate, explain, export and serve CNNs on MNIST-style 28x28 grayscale images.

    from mnist_cnn import load_mnist, get_spec, summary, make_config, train, load_run, evaluate
"""

from .data import MnistData, load_mnist, split_validation, to_float
from .errors import MnistCnnError
from .evaluate import evaluate, format_metrics, predict_logits
from .models import build_model, count_params, layer_table, summary
from .runs import Run, load_run
from .spec import Layer, ModelSpec, load_spec, parse_spec
from .train import TrainConfig, make_config, train
from .zoo import MODELS, RECIPES, get_spec

__version__ = "0.1.0"

__all__ = [
    "MODELS", "RECIPES", "Layer", "MnistCnnError", "MnistData", "ModelSpec", "Run", "TrainConfig", "build_model",
    "count_params", "evaluate", "format_metrics", "get_spec", "layer_table", "load_mnist", "load_run", "load_spec",
    "make_config", "parse_spec", "predict_logits", "split_validation", "summary", "to_float", "train",
]
