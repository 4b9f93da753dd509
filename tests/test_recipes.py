"""Named recipes resolve to full configs; schedules give the expected learning rates at given steps."""

import math
from itertools import pairwise

import pytest

from mnist_cnn import MODELS, RECIPES, MnistCnnError, get_spec, make_config
from mnist_cnn.training.optim import learning_rate


def test_every_tutorial_model_has_its_recipe():
    for name, entry in MODELS.items():
        config = make_config(recipe=name)
        assert config.model == name and config.recipe == name
        for key, value in entry.recipe.items():
            assert getattr(config, key) == value, (name, key)


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_resolves_and_builds(name):
    config = make_config(recipe=name)
    get_spec(config.model, **config.model_options)


def test_best_recipe_fields():
    c = make_config(recipe="best")
    assert c.model == "deotte" and c.optimizer == "adam" and c.schedule == "onecycle"
    assert c.epochs == 15 and c.batch_size == 128 and c.lr == 2e-3 and c.precision == "bf16"
    assert c.augment == {"rotation": 10, "zoom": 0.1, "width_shift": 0.1, "height_shift": 0.1}
    assert c.val_size == 5000 and c.validation_split is None  # selection on a validation split, never the test
    assert make_config(recipe="best", epochs=3, seed=7).epochs == 3  # explicit values win


def test_deotte_model_matches_the_kaggle_summary():
    from mnist_cnn import count_params

    assert count_params(get_spec("deotte")) == (327_242, 326_410, 832)
    assert count_params(get_spec("deotte", filters=16))[0] < 327_242


def test_fast_recipe_fields_and_model():
    from mnist_cnn import count_params

    c = make_config(recipe="fast")
    assert c.model == "fast-cnn" and c.optimizer == "adam" and c.lr == 3e-2 and c.batch_size == 128
    assert c.epochs == 1 and c.schedule == "onecycle" and c.label_smoothing == 0.1
    assert count_params(get_spec("fast-cnn")) == (26_026, 25_866, 160)


def test_minute_recipe_is_fast_cnns_stem_with_convs_of_64_and_128():
    from mnist_cnn import count_params

    c = make_config(recipe="minute")
    assert c.model == "minute-cnn" and c.lr == 2e-2 and c.batch_size == 128 and c.epochs == 4
    assert c.augment is None and c.schedule == "onecycle" and c.label_smoothing == 0.1
    # the stem (416 + 64), convs of 64 and 128 (9,280 + 73,856) with batch norm (256 + 512), dense on 1,152 features
    assert count_params(get_spec("minute-cnn")) == (95_914, 95_498, 416)


def test_fast_recipe_learns_from_10000_images(mnist, tmp_path):
    from mnist_cnn import train

    config = make_config(recipe="fast", limit_train=10_000, limit_test=2_000, out=str(tmp_path / "run"), verbose=0)
    run = train(config, mnist, log=lambda _msg: None)
    assert run.metrics["accuracy"] >= 0.95  # 96.6-97.2% measured over seeds 0-2; 99.2% on all 60,000


def test_unknown_recipe_is_refused():
    with pytest.raises(MnistCnnError, match="unknown recipe 'bestest'"):
        make_config(recipe="bestest")


def test_exponential_schedule_decays_per_epoch():
    for k in (0, 1, 5, 29):
        assert learning_rate("exponential", 1e-3, k * 100, 100, 3000) == pytest.approx(1e-3 * 0.95 ** k)
        assert learning_rate("exponential", 1e-3, k * 100 + 99, 100, 3000) == pytest.approx(1e-3 * 0.95 ** k)
    assert learning_rate("exponential", 1e-3, 300, 100, 3000, decay=0.5) == pytest.approx(1e-3 / 8)


def test_cosine_schedule():
    assert learning_rate("cosine", 0.1, 0, 10, 1000) == pytest.approx(0.1)
    assert learning_rate("cosine", 0.1, 500, 10, 1000) == pytest.approx(0.05)
    assert learning_rate("cosine", 0.1, 250, 10, 1000) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert learning_rate("cosine", 0.1, 1000, 10, 1000) == pytest.approx(0.0, abs=1e-12)


def test_onecycle_schedule_warms_up_peaks_and_anneals():
    lrs = [learning_rate("onecycle", 2e-3, s, 10, 1000) for s in range(1001)]
    assert lrs[0] == pytest.approx(2e-4)
    assert max(lrs) == pytest.approx(2e-3) and lrs.index(max(lrs)) == 250
    assert lrs[625] == pytest.approx(1e-3) and lrs[1000] == pytest.approx(0.0, abs=1e-12)
    assert all(a <= b for a, b in pairwise(lrs[:251])) and all(a >= b for a, b in pairwise(lrs[250:]))


def test_constant_and_unknown_schedules():
    assert learning_rate("constant", 1e-3, 12345, 100, 200) == 1e-3
    with pytest.raises(MnistCnnError, match="unknown schedule"):
        learning_rate("triangle", 1e-3, 0, 1, 1)


def test_a_recipe_with_another_model_is_refused():
    # a recipe is tuned for its own model: applying none of it to another one, silently, would mislead
    with pytest.raises(MnistCnnError, match="recipe fast trains fast-cnn; give recipe or model keras-basic"):
        make_config(recipe="fast", model="keras-basic")
    assert make_config(recipe="fast", model="fast-cnn").model == "fast-cnn"
