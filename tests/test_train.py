"""Training pieces: the schedule, the tensors, the augmentation, the network."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from ambiguous_digits.config import PIXEL_MEAN, PIXEL_STD, Config, ConfigError
from ambiguous_digits.model import MaxPool, Net, NetShape, checkpoint, count_parameters, describe, from_checkpoint
from ambiguous_digits.train import (Precision, augment, eval_batch, one_cycle, predict_probs, steps_per_epoch,
                                    to_tensor, train)


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
