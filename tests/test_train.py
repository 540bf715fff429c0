"""Training pieces: the schedule, the tensors, the augmentation, training itself, scoring, the norms' statistics."""

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ambiguous_digits import train as training
from ambiguous_digits.config import PIXEL_MEAN, PIXEL_STD, ConfigError, Recipe
from ambiguous_digits.model import Net, NetShape
from ambiguous_digits.train import (Dynamics, Precision, Runtime, augment, eval_batch, one_cycle, predict_probs,
                                    recompute_norm_stats, setup, steps_per_epoch, to_tensor, train)

CPU = Runtime(torch.device("cpu"), Precision(False))


@pytest.mark.parametrize("total", [1, 2, 3, 4, 7, 235, 940])
def test_one_cycle_warms_up_to_the_peak_then_decays(total):
    f = [one_cycle(t, total) for t in range(total)]
    assert all(0 <= v <= 1 for v in f)
    peak = int(np.argmax(f))
    assert all(a <= b for a, b in zip(f[:peak], f[1:peak + 1]))
    assert all(a >= b for a, b in zip(f[peak:], f[peak + 1:]))
    if total >= 4:  # the last step is one step above 0 on the linear decay
        warm = max(1, round(0.25 * total))
        assert max(f) == 1 and f[-1] == pytest.approx(1 / (total - warm)) and f[-1] < f[warm]


def test_to_tensor_normalises_and_keeps_order():
    images = np.stack([np.zeros((28, 28), np.uint8), np.full((28, 28), 255, np.uint8)])
    x = to_tensor(images, torch.device("cpu"))
    assert x.shape == (2, 1, 28, 28)
    assert x[0].flatten()[0].item() == pytest.approx(-PIXEL_MEAN / PIXEL_STD)
    assert x[1].flatten()[0].item() == pytest.approx((1 - PIXEL_MEAN) / PIXEL_STD)


def test_more_members_keep_the_first_members_seeds():
    # A run with one more member gives the first members the seeds they had (cross-fitted, their folds change); the
    # audit's folds draw from streams of their own.
    five, six = Recipe(seed=3, members=5).member_seeds(), Recipe(seed=3, members=6).member_seeds()
    assert six[:5] == five and six[5] not in five and len(set(six)) == 6
    assert Recipe(seed=4, members=5).member_seeds() != five
    fold = Recipe(seed=3, members=6).member_seeds(fold=0)
    assert not set(fold) & set(six) and Recipe(seed=3, members=5).member_seeds(fold=0) == fold[:5]


def test_a_recipe_round_trips_through_json():
    recipe = Recipe(class_names=tuple("abcdefghij"), widths=(4, 8), hidden=16, train_limit=100)
    assert Recipe.from_json(json.loads(json.dumps(recipe.to_json()))) == recipe and Recipe.from_json(Recipe().to_json()) == Recipe()


def test_setup_resolves_the_device_and_the_precision():
    assert setup("cpu", None, "fp32") == (torch.device("cpu"), Precision(False))
    assert setup("cpu", None, "bf16") == (torch.device("cpu"), Precision(True))


def _digits(n=16, seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 8:20, 10:18] = rng.integers(0, 256, size=(n, 12, 8))
    return to_tensor(images, torch.device("cpu"))


def test_augment_keeps_shape_and_pixel_range_and_is_seeded():
    x = _digits()
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    c = augment(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape
    lo, hi = -PIXEL_MEAN / PIXEL_STD, (1 - PIXEL_MEAN) / PIXEL_STD
    assert a.min() >= lo - 1e-5 and a.max() <= hi + 1e-5
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Blank background stays blank far from the digit: the corners are never ink.
    assert torch.allclose(a[:, :, 0, 0], torch.tensor(lo))


NEEDS_TWO = [Recipe(hidden=8), Recipe(widths=(4, 4, 4, 4))]  # a hidden layer; a last stage of 1 x 1


@pytest.mark.parametrize("recipe", NEEDS_TWO)
@pytest.mark.parametrize("n, steps", [(512, 2), (513, 2), (514, 3), (2, 1), (257, 1)])
def test_a_last_batch_of_one_digit_joins_the_one_before_where_batch_norm_needs_two(recipe, n, steps):
    assert recipe.norm_needs_two and steps_per_epoch(n, replace(recipe, batch_size=256)) == steps
    with pytest.raises(ConfigError, match="--train-limit: a network with --hidden or four --widths stages trains on at "
                                          "least 2 digits, got 1"):
        steps_per_epoch(1, recipe)


@pytest.mark.parametrize("n, steps", [(512, 2), (513, 3), (1, 1), (257, 2)])
def test_other_networks_train_on_every_batch_as_before(n, steps):
    assert not Recipe().norm_needs_two and steps_per_epoch(n, replace(Recipe(), batch_size=256)) == steps


@pytest.mark.parametrize("recipe", NEEDS_TWO)
def test_a_batch_of_one_digit_is_refused_where_batch_norm_needs_two(recipe):
    with pytest.raises(ConfigError, match="--batch-size: must be at least 2 with --hidden or 4 --widths stages"):
        replace(recipe, batch_size=1)
    replace(Recipe(), batch_size=1)  # the default network's stages end at 3 x 3: it trains on one digit


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_a_hidden_layer_of_other_than_a_whole_number_of_units_is_refused(bad):
    with pytest.raises(ConfigError, match="--hidden: expected 0"):
        Recipe(hidden=bad)


def test_training_on_a_set_whose_last_batch_would_be_one_digit_trains_every_digit(mnist):
    """Batch norm cannot train on one value per channel (a hidden layer's, or a last stage of 1 x 1): a batch of
    one digit raised ValueError. The lone digit then sat its epoch out, and a one-epoch member never trained on it
    (the run's dynamics failed); now it joins the last batch."""
    x, y = mnist.x_train[:65], mnist.y_train[:65]
    recipe = Recipe(epochs=1, batch_size=32, widths=(4, 4, 4, 4), hidden=8)
    steps = []
    rt = replace(CPU, hook=lambda model, done: steps.append(done), hooks_per_epoch=2)
    recorded = Dynamics(1, len(y))
    model, history = train(x, y, recipe, 0, rt, num_classes=10, dynamics=recorded)
    assert steps == [0.5, 1.0] and len(history) == 1  # 2 steps: 32 digits, then 33
    assert not torch.isnan(recorded.values).any()  # every digit trained in the epoch


def test_scoring_in_small_chunks_gives_the_same_probabilities_row_for_row():
    """CPU scoring runs in chunks of 64 (cache-sized, ~2x faster here); the chunking must not change a row."""
    torch.manual_seed(0)
    model = Net(NetShape(10)).to(memory_format=torch.channels_last).eval()
    images = np.random.default_rng(0).integers(0, 256, (300, 28, 28), dtype=np.uint8)
    cpu = torch.device("cpu")
    assert eval_batch(cpu) == 64 and eval_batch(torch.device("cuda")) == 1000
    whole = predict_probs(model, images, cpu, batch=300)
    for batch in (None, 7, 1):
        chunked = predict_probs(model, images, cpu, batch)
        assert chunked.shape == (300, 10) and chunked.dtype == np.float32
        np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(predict_probs(model, images[::-1].copy(), cpu)[::-1], whole, rtol=1e-6, atol=1e-7)


def _norms(model: Net) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("batch", [500, 7, 2])
def test_recomputed_norm_stats_are_those_of_the_clean_digits_in_training_mode_but_the_first_norm_s(batch):
    """Every norm but the first: the mean over the batches of its input's batch mean and unbiased batch
    variance, with every norm normalising by its batch, as in training. The first keeps its averages."""
    torch.manual_seed(0)
    model = Net(NetShape(10, widths=(4, 8, 8), hidden=6)).to(memory_format=torch.channels_last)
    norms = _norms(model)
    assert len(norms) == 4
    for m in norms:  # averages that are plainly not the clean digits'
        m.running_mean.fill_(3.0), m.running_var.fill_(5.0)
    first = {k: v.clone() for k, v in norms[0].state_dict().items()}
    x = _digits(20, seed=2)
    seen = {i: [] for i in range(len(norms))}
    hooks = [m.register_forward_pre_hook(lambda m, a, i=i: seen[i].append(a[0].detach().clone()))
             for i, m in enumerate(norms)]
    recompute_norm_stats(model, x, batch=batch)
    for h in hooks:
        h.remove()
    assert all(len(v) == len(seen[0]) for v in seen.values())
    assert len(seen[0]) == (1 if batch == 500 else 3 if batch == 7 else 10)
    for i, m in enumerate(norms[1:], 1):
        dims = [0, 2, 3] if seen[i][0].dim() == 4 else [0]
        mean = torch.stack([b.mean(dims) for b in seen[i]]).mean(0)
        var = torch.stack([b.var(dims, unbiased=True) for b in seen[i]]).mean(0)
        torch.testing.assert_close(m.running_mean, mean)
        torch.testing.assert_close(m.running_var, var)
        assert m.momentum == 0.1 and m.track_running_stats
    # the first norm kept its averages, and normalised by its batch (with its averages, of mean 3 and
    # variance 5, the next norm's input would be another)
    assert all(torch.equal(v, norms[0].state_dict()[k]) for k, v in first.items())
    assert norms[0].track_running_stats and norms[0].momentum == 0.1 and model.training  # as it was
    by_batch = torch.nn.functional.batch_norm(seen[0][0], None, None, norms[0].weight, norms[0].bias, training=True)
    relu_then_conv = torch.nn.Sequential(*list(model.features)[3:5])  # ReLU, then the second stage's conv
    assert isinstance(relu_then_conv[1], torch.nn.Conv2d)
    torch.testing.assert_close(seen[1][0], model.features[5](relu_then_conv(by_batch)))  # that conv's max-pool


def test_recomputing_norm_stats_never_hands_a_hidden_layer_s_norm_one_digit():
    """A hidden layer's norm sees one value per channel per digit: 501 digits in batches of 500 would
    leave it a batch of one, which batch norm refuses in training mode; the last digit joins the batch before."""
    torch.manual_seed(0)
    model = Net(NetShape(10, widths=(4, 4), hidden=6)).eval()
    sizes = []
    model.head[1].register_forward_pre_hook(lambda m, a: sizes.append(len(a[0])))
    recompute_norm_stats(model, _digits(501, seed=3), batch=500)
    assert sizes == [501] and torch.isfinite(_norms(model)[-1].running_var).all() and not model.training


def test_a_failed_recomputation_leaves_every_norm_as_it_was():
    """A batch of one digit for a hidden layer's norm (one digit in all): batch norm refuses it; the norms
    keep their statistics, momentum and tracking, and the network its mode."""
    torch.manual_seed(0)
    model = Net(NetShape(10, widths=(4, 4), hidden=6)).eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        recompute_norm_stats(model, _digits(1, seed=4))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.momentum == 0.1 and m.track_running_stats for m in _norms(model)) and not model.training


def test_a_network_with_one_norm_has_none_to_recompute():
    torch.manual_seed(0)
    model = Net(NetShape(10, widths=(4,))).eval()
    before = copy.deepcopy(model.state_dict())
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    recompute_norm_stats(model, _digits(8, seed=5))
    assert calls == [] and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("hidden", [0, 6])
def test_augmented_training_ends_by_recomputing_the_norm_stats_over_the_clean_training_digits(mnist, hidden,
                                                                                             monkeypatch):
    """train = train with the running averages kept, then recompute_norm_stats over the clean training
    digits, byte for byte; training without augmentation leaves the averages as they are."""
    x, y = mnist.x_train[:700], mnist.y_train[:700]
    cpu = torch.device("cpu")
    recipe = Recipe(epochs=1, batch_size=64, widths=(4, 8, 8), hidden=hidden)
    assert recipe.augment
    clean, _ = train(x, y, recipe, 0, CPU, num_classes=10)
    recomputed = []
    monkeypatch.setattr(training, "recompute_norm_stats", lambda model, x: recomputed.append(x))
    running, _ = train(x, y, recipe, 0, CPU, num_classes=10)
    assert len(recomputed) == 1 and torch.equal(recomputed[0], to_tensor(x, cpu))
    test = mnist.x_test[:200]
    assert predict_probs(clean, test, cpu).tobytes() != predict_probs(running, test, cpu).tobytes()
    recompute_norm_stats(running, to_tensor(x, cpu))
    assert predict_probs(clean, test, cpu).tobytes() == predict_probs(running, test, cpu).tobytes()
    train(x, y, replace(recipe, augment=False), 0, CPU, num_classes=10)
    assert len(recomputed) == 1  # not called without augmentation
