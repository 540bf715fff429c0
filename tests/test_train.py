"""Training pieces: the schedule, the tensors, the augmentation, the network."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from ambiguous_digits.config import PIXEL_MEAN, PIXEL_STD, Config, ConfigError
from ambiguous_digits.model import MaxPool, Net, NetShape, checkpoint, count_parameters, describe, from_checkpoint
from ambiguous_digits.train import (Precision, augment, eval_batch, one_cycle, predict_probs, recompute_norm_stats,
                                    steps_per_epoch, to_tensor, train)


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
    # A run with one more member trains the same members plus one (README, *Why six members*); the
    # audit's folds draw from streams of their own.
    five, six = Config(seed=3, members=5).member_seeds(), Config(seed=3, members=6).member_seeds()
    assert six[:5] == five and six[5] not in five and len(set(six)) == 6
    assert Config(seed=4, members=5).member_seeds() != five
    fold = Config(seed=3, members=6).member_seeds(fold=0)
    assert not set(fold) & set(six) and Config(seed=3, members=5).member_seeds(fold=0) == fold[:5]


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


# By hand: 3 stages of conv (no bias) + BN (scale, shift): 36+8, 288+16, 1152+32; then either the output
# layer on the last stage, 16*3*3*10 + 10, or a hidden layer of 128 (no bias) + BN, 144*128 + 256, and the
# output layer on it, 128*10 + 10.
STAGES = 44 + 304 + 1184


@pytest.mark.parametrize("pool_first", [True, False])
@pytest.mark.parametrize("hidden, parameters", [(0, STAGES + 1450), (128, STAGES + 18432 + 256 + 1290)])
def test_net_returns_logits_and_round_trips_a_checkpoint(pool_first, hidden, parameters):
    net = Net(NetShape(10, widths=(4, 8, 16), pool_first=pool_first, hidden=hidden)).eval()
    x = _digits(3)
    out = net(x)
    assert out.shape == (3, 10)
    again = from_checkpoint(checkpoint(net)).eval()
    assert again.shape == net.shape and torch.equal(again(x), out)
    assert count_parameters(net) == count_parameters(again) == parameters


def test_a_hidden_layer_is_linear_bn_relu_before_the_output_layer_and_off_by_default():
    assert NetShape(10).hidden == Config().hidden == 0
    kinds = [type(m).__name__ for m in Net(NetShape(10, widths=(4, 8), hidden=16)).head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert isinstance(Net(NetShape(10, widths=(4, 8))).head, torch.nn.Linear)
    assert "linear(128)+BN+ReLU -> linear(10)" in describe(Net(NetShape(10, hidden=128)))
    assert describe(Net(NetShape(10))).count("linear(") == 1
    for bad in (-1, 1.5, True, None):
        with pytest.raises(ConfigError, match="--hidden: expected 0"):
            Config(hidden=bad)


def test_a_checkpoint_from_before_the_hidden_layer_rebuilds_a_network_without_it():
    """Runs before version 0.4 saved no hidden: the output layer reads the last stage."""
    torch.manual_seed(0)
    old = Net(NetShape(10, widths=(4, 8, 16))).eval()
    ckpt = checkpoint(old)
    del ckpt["shape"]["hidden"]
    again = from_checkpoint(ckpt).eval()
    assert again.shape.hidden == 0
    x = _digits(3)
    assert torch.equal(again(x), old(x))


NEEDS_TWO = [Config(hidden=8), Config(widths=(4, 4, 4, 4))]  # a hidden layer; a last stage of 1 x 1


@pytest.mark.parametrize("cfg", NEEDS_TWO)
@pytest.mark.parametrize("n, steps", [(512, 2), (513, 2), (514, 3), (2, 1), (257, 1)])
def test_an_epoch_leaves_out_a_last_batch_of_one_digit_where_batch_norm_needs_two(cfg, n, steps):
    assert cfg.norm_needs_two and steps_per_epoch(n, replace(cfg, batch_size=256)) == steps
    with pytest.raises(ConfigError, match="--train-limit: a network with --hidden or four --widths stages trains on at "
                                          "least 2 digits, got 1"):
        steps_per_epoch(1, cfg)


@pytest.mark.parametrize("n, steps", [(512, 2), (513, 3), (1, 1), (257, 2)])
def test_other_networks_train_on_every_batch_as_before(n, steps):
    assert not Config().norm_needs_two and steps_per_epoch(n, replace(Config(), batch_size=256)) == steps


@pytest.mark.parametrize("cfg", NEEDS_TWO)
def test_a_batch_of_one_digit_is_refused_where_batch_norm_needs_two(cfg):
    with pytest.raises(ConfigError, match="--batch-size: must be at least 2 with --hidden or 4 --widths stages"):
        replace(cfg, batch_size=1)
    replace(Config(), batch_size=1)  # the default network's stages end at 3 x 3: it trains on one digit


def test_training_on_a_set_whose_last_batch_would_be_one_digit_works(mnist):
    """Batch norm cannot train on one value per channel (a hidden layer's, or a last stage of 1 x 1):
    before the last batch of one digit was left out, this raised ValueError in the second step."""
    x, y = mnist.x_train[:65], mnist.y_train[:65]
    cfg = Config(epochs=1, batch_size=32, widths=(4, 4, 4, 4), hidden=8)
    steps = []
    model, history = train(x, y, cfg, 0, torch.device("cpu"), Precision(False), progress=False, num_classes=10,
                           hook=lambda model, done: steps.append(done), hooks_per_epoch=2)
    assert steps == [0.5, 1.0] and len(history) == 1  # 2 steps of 32 digits; the 65th sat the epoch out


def test_each_stage_pools_before_its_batch_norm_unless_told_otherwise():
    kinds = [type(m).__name__ for m in Net(NetShape(10, widths=(4, 8))).features]
    assert kinds == ["Conv2d", "MaxPool", "BatchNorm2d", "ReLU"] * 2
    kinds = [type(m).__name__ for m in Net(NetShape(10, widths=(4, 8), pool_first=False)).features]
    assert kinds == ["Conv2d", "BatchNorm2d", "MaxPool", "ReLU"] * 2
    assert "pool+BN" in describe(Net(NetShape(10))) and "BN+pool" in describe(Net(NetShape(10, pool_first=False)))


@pytest.mark.parametrize("batch", [1, 3])  # one digit: what `predict` scores
@pytest.mark.parametrize("side", [28, 7, 6, 2])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_max_pool_s_scoring_path_gives_max_pool2d_s_values_layout_and_gradient(batch, side, layout):
    """Without autograd MaxPool takes the maximum of four interleaved views; it must give MaxPool2d's
    values in MaxPool2d's memory layout, ties (blank background) and odd sides included. With autograd
    it is MaxPool2d, whose gradient goes to one of tied maxima."""
    gen = torch.Generator().manual_seed(side)
    x = torch.randint(-2, 3, (batch, 5, side, side), generator=gen).float()  # 5 values: ties in nearly every window
    x[0, 0, 0, 0] = float("nan")
    x = x.contiguous(memory_format=layout)
    with torch.no_grad():
        got, want = MaxPool()(x), torch.nn.MaxPool2d(2)(x)
    assert got.stride() == want.stride() and torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())
    grads = []
    for pool in (MaxPool(), torch.nn.MaxPool2d(2)):
        leaf = x.nan_to_num().requires_grad_()
        pool(leaf).sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1]) and grads[0].unique().tolist() == [0.0, 1.0]  # none split among ties


def test_the_max_pool_refuses_a_map_too_small_to_pool_as_max_pool2d_does():
    with torch.no_grad(), pytest.raises(RuntimeError, match="Output size is too small"):
        MaxPool()(torch.zeros(2, 3, 1, 1))


def test_a_trained_network_scores_to_the_same_bytes_with_either_max_pool(mnist):
    x, y = mnist.x_train[:600], mnist.y_train[:600]
    model, _ = train(x, y, Config(epochs=1, batch_size=64), 0, torch.device("cpu"), Precision(False),
                     progress=False, num_classes=10)
    got = predict_probs(model, mnist.x_test[:300], torch.device("cpu"))
    for i, layer in enumerate(model.features):
        if isinstance(layer, MaxPool):
            model.features[i] = torch.nn.MaxPool2d(2)
    want = predict_probs(model, mnist.x_test[:300], torch.device("cpu"))
    assert got.tobytes() == want.tobytes()


def test_a_checkpoint_from_before_the_stage_order_field_rebuilds_the_earlier_order():
    """Runs before version 0.2 saved no pool_first: their networks normalise before pooling."""
    torch.manual_seed(0)
    old = Net(NetShape(10, widths=(4, 8, 16), pool_first=False, hidden=0)).eval()
    ckpt = checkpoint(old)
    del ckpt["shape"]["pool_first"], ckpt["shape"]["hidden"]
    again = from_checkpoint(ckpt).eval()
    assert again.shape.pool_first is False
    x = _digits(3)
    assert torch.equal(again(x), old(x))
    # The parameter names of a version 0.1 checkpoint (written out, not derived from the code under test).
    stage = ["weight"], ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    names = [f"features.{4 * i + j}.{p}" for i in range(3) for j in (0, 1) for p in stage[j]]
    assert list(ckpt["state_dict"]) == names + ["head.weight", "head.bias"]
    with pytest.raises(RuntimeError):  # the same keys would not even load into the new order's network
        Net(NetShape(10, widths=(4, 8, 16))).load_state_dict(old.state_dict())


def _relu_then_pool(net: Net) -> Net:
    """The same network (batch norm, then max-pool) with each stage's ReLU before its max-pool (the textbook order)."""
    other = Net(net.shape)
    other.load_state_dict(net.state_dict())  # the stages' parameter names do not depend on the order
    layers = list(other.features)
    for i in range(0, len(layers), 4):
        assert isinstance(layers[i + 2], torch.nn.MaxPool2d) and isinstance(layers[i + 3], torch.nn.ReLU)
        layers[i + 2], layers[i + 3] = layers[i + 3], layers[i + 2]
    other.features = torch.nn.Sequential(*layers)
    return other


@pytest.mark.parametrize("autocast", [False, True])
def test_pool_before_relu_trains_bit_for_bit_like_relu_before_pool(autocast):
    torch.manual_seed(0)
    ours = Net(NetShape(10, widths=(4, 8, 16), pool_first=False))
    textbook = _relu_then_pool(ours)
    x, y = _digits(32, seed=1), torch.arange(32) % 10
    for net in (ours, textbook):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(5):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = torch.nn.functional.cross_entropy(net(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    a, b = ours.state_dict(), textbook.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(ours.eval()(x), textbook.eval()(x))


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
def test_clean_norm_stats_are_the_running_ones_recomputed_after_augmented_training(mnist, hidden):
    """train with norm_stats='clean' = train with 'running', then recompute_norm_stats over the clean
    training digits, byte for byte; training without augmentation leaves the averages as they are."""
    x, y = mnist.x_train[:700], mnist.y_train[:700]
    cpu, fp32 = torch.device("cpu"), Precision(False)
    cfg = Config(epochs=1, batch_size=64, widths=(4, 8, 8), hidden=hidden)
    assert cfg.norm_stats == "clean"
    clean, _ = train(x, y, cfg, 0, cpu, fp32, progress=False, num_classes=10)
    running, _ = train(x, y, replace(cfg, norm_stats="running"), 0, cpu, fp32, progress=False, num_classes=10)
    test = mnist.x_test[:200]
    assert predict_probs(clean, test, cpu).tobytes() != predict_probs(running, test, cpu).tobytes()
    recompute_norm_stats(running, to_tensor(x, cpu))
    assert predict_probs(clean, test, cpu).tobytes() == predict_probs(running, test, cpu).tobytes()
    plain = [train(x, y, replace(cfg, augment=False, norm_stats=s), 0, cpu, fp32, progress=False, num_classes=10)[0]
             for s in ("clean", "running")]
    assert predict_probs(plain[0], test, cpu).tobytes() == predict_probs(plain[1], test, cpu).tobytes()


def test_norm_stats_is_checked_and_a_config_from_before_it_kept_the_running_averages():
    with pytest.raises(ConfigError, match="--norm-stats: expected clean or running, got 'fresh'"):
        Config(norm_stats="fresh")
    old = Config().to_json()
    del old["norm_stats"]
    assert Config.from_json(old).norm_stats == "running" and Config.from_json(Config().to_json()) == Config()
