"""forward.NumpyNet: model.Net's eval-mode pass in numpy, from the weights model.arrays saves."""

import io

import numpy as np
import pytest
import torch

from ambiguous_digits import model
from ambiguous_digits.forward import NumpyNet
from ambiguous_digits.train import predict_features, predict_probs


def _trained_looking(shape: model.NetShape, seed: int) -> model.Net:
    """A net whose batch norms hold running statistics and affine terms far from their defaults."""
    torch.manual_seed(seed)
    net = model.Net(shape)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.2, 3.0)
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def _saved(net: model.Net, tmp_path) -> NumpyNet:
    buf = io.BytesIO()
    np.savez(buf, **model.arrays(net))
    (tmp_path / "w.npz").write_bytes(buf.getvalue())
    return NumpyNet.load(tmp_path / "w.npz")


@pytest.mark.parametrize("widths, hidden, pad_first", [((16, 32, 128), 0, 0), ((16, 32, 128), 0, 1), ((4, 8), 16, 0),
                                                       ((4, 8), 16, 1), ((3, 5, 7, 6), 0, 1), ((3, 5, 7, 6), 0, 0)])
def test_numpy_gives_what_torch_gives(widths, hidden, pad_first, tmp_path):
    """Odd sides (7 -> 3, 13 -> 6, 3 -> 1) drop a row and column in pooling as torch's MaxPool2d does."""
    net = _trained_looking(model.NetShape(10, widths=widths, hidden=hidden, pad_first=pad_first), seed=len(widths))
    digits = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    cpu = torch.device("cpu")
    mine = _saved(net, tmp_path)
    assert mine.num_classes == 10
    np.testing.assert_allclose(mine.probs(digits), predict_probs(net, digits, cpu), atol=1e-5)
    for spatial in ("mean", "flat"):
        theirs = predict_features(net, digits, cpu, spatial=spatial)
        np.testing.assert_allclose(mine.features(digits, spatial), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_the_saved_weights_leave_out_the_batch_counters_and_keep_the_shape():
    named = model.arrays(model.Net(model.NetShape(4, widths=(2,), hidden=3)))
    assert not any(k.endswith("num_batches_tracked") for k in named)
    assert str(named["shape"]) == '{"num_classes": 4, "widths": [2], "hidden": 3, "pad_first": 0}'


def test_weights_saved_before_0_13_load_with_the_first_convolution_padded(tmp_path):
    """A 0.12 member's file has no "pad_first": its first convolution padded."""
    net = _trained_looking(model.NetShape(10, pad_first=1), seed=0)
    named = model.arrays(net)
    named["shape"] = np.array('{"num_classes": 10, "widths": [16, 32, 128], "hidden": 0}')
    np.savez(tmp_path / "old.npz", **named)
    digits = np.random.default_rng(1).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    old = NumpyNet.load(tmp_path / "old.npz")
    assert old.pad_first == 1
    np.testing.assert_allclose(old.probs(digits), predict_probs(net, digits, torch.device("cpu")), atol=1e-5)


def test_the_weights_file_predict_reads_is_the_one_a_member_saves():
    from ambiguous_digits import rundir

    assert rundir.weights_file(rundir.MODEL_FILE.format(m=3)) == "models/member-3.npz"
