"""The network: its stages, the optional hidden layer, its description and its checkpoints."""

import numpy as np
import pytest
import torch

from ambiguous_digits.config import Recipe
from ambiguous_digits.model import Net, NetShape, checkpoint, count_parameters, describe, from_checkpoint
from ambiguous_digits.train import new_net, to_tensor


def _digits(n=3, seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 8:20, 10:18] = rng.integers(0, 256, size=(n, 12, 8))
    return to_tensor(images, torch.device("cpu"))


# By hand: 3 stages of conv (no bias) + BN (scale, shift): 36+8, 288+16, 1152+32; then either the output
# layer on the last stage, 16*3*3*10 + 10, or a hidden layer of 128 (no bias) + BN, 144*128 + 256, and the
# output layer on it, 128*10 + 10.
STAGES = 44 + 304 + 1184


@pytest.mark.parametrize("hidden, parameters", [(0, STAGES + 1450), (128, STAGES + 18432 + 256 + 1290)])
def test_net_returns_logits_and_round_trips_a_checkpoint(hidden, parameters):
    net = Net(NetShape(10, widths=(4, 8, 16), hidden=hidden)).eval()
    x = _digits(3)
    out = net(x)
    assert out.shape == (3, 10)
    again = from_checkpoint(checkpoint(net)).eval()
    assert again.shape == net.shape and torch.equal(again(x), out)
    assert count_parameters(net) == count_parameters(again) == parameters


def test_a_hidden_layer_is_linear_bn_relu_before_the_output_layer_and_off_by_default():
    assert NetShape(10).hidden == Recipe().hidden == 0
    kinds = [type(m).__name__ for m in Net(NetShape(10, widths=(4, 8), hidden=16)).head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert isinstance(Net(NetShape(10, widths=(4, 8))).head, torch.nn.Linear)
    assert "linear(128)+BN+ReLU -> linear(10)" in describe(Net(NetShape(10, hidden=128)))
    assert describe(Net(NetShape(10))).count("linear(") == 1


def test_each_stage_pools_before_its_batch_norm():
    kinds = [type(m).__name__ for m in Net(NetShape(10, widths=(4, 8))).features]
    assert kinds == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"] * 2
    assert "conv3x3(16, unpadded)+pool+BN+ReLU -> conv3x3(32)+pool+BN+ReLU" in describe(Net(NetShape(10)))


def test_a_recipe_builds_the_network_of_its_shape():
    recipe = Recipe(widths=(4, 8), hidden=16)
    assert new_net(recipe, 7).shape == NetShape(7, widths=(4, 8), hidden=16)
    assert new_net(Recipe(), 10).shape == NetShape(10)  # the recipe's defaults are the network's
    assert new_net(Recipe(pad_first=1), 10).shape == NetShape(10, pad_first=1)


@pytest.mark.parametrize("pad_first, sides", [(0, [13, 6, 3]), (1, [14, 7, 3])])
def test_only_the_first_convolution_may_go_unpadded(pad_first, sides):
    net = Net(NetShape(10, widths=(4, 8, 16), pad_first=pad_first))
    assert [c.padding for c in net.features if isinstance(c, torch.nn.Conv2d)] == [(pad_first,) * 2, (1, 1), (1, 1)]
    x, seen = _digits(2), []
    for layer in net.features:
        x = layer(x)
        if isinstance(layer, torch.nn.MaxPool2d):
            seen.append(x.shape[-1])
    assert seen == sides
    assert ("conv3x3(4, unpadded)" in describe(net)) == (pad_first == 0) and describe(net).count("unpadded") <= 1


def test_a_checkpoint_saved_before_0_13_loads_with_the_first_convolution_padded():
    net = Net(NetShape(10, widths=(4, 8), pad_first=1)).eval()
    old = checkpoint(net)
    del old["shape"]["pad_first"]
    again = from_checkpoint(old).eval()
    assert again.shape.pad_first == 1 and torch.equal(again(_digits(2)), net(_digits(2)))
