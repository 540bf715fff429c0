"""The CNN: a few conv-pool-BN-ReLU stages, an optional hidden linear-BN-ReLU layer, and the output layer. Returns logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NetShape:
    """The network's shape; saved inside each checkpoint so any stage can rebuild it."""

    num_classes: int  # K, from the data set (10 for MNIST)
    widths: tuple[int, ...] = (16, 32, 128)
    # Each stage's max-pool before its batch norm (conv-pool-BN-ReLU), or after it
    # (conv-BN-pool-ReLU: every network before version 0.2; their checkpoints lack
    # the field, and from_checkpoint rebuilds them that way).
    pool_first: bool = True
    # Units of a linear-BN-ReLU layer between the last stage and the output layer; 0 (the default):
    # none, the output layer reads the last stage directly. Checkpoints from before version 0.4 lack
    # the field, and from_checkpoint rebuilds them without it.
    hidden: int = 0


class MaxPool(nn.MaxPool2d):
    """nn.MaxPool2d(2): a 2x2 max-pool, stride 2, its values and its gradient. Scoring a CPU tensor
    without autograd, it takes the elementwise maximum of the four interleaved quarter-maps instead,
    laid out as MaxPool2d's output: equal values (a maximum tied between -0.0 and +0.0
    may keep the other zero's sign), without writing each maximum's index. On the 2-core build
    machine that pooled the first stage's channels-last maps 3x faster (69 against 218 us for 64
    digits), and the seed-0 run's five members scored 6.6% more digits a second (median of 100 paired
    alternations), their probabilities byte-identical to the run's (tests/test_train.py checks the
    same on a small trained network). With autograd it is MaxPool2d's own, whose gradient goes to one
    of tied maxima (torch.maximum's would split it, and blank background gives many ties); so it is on
    a GPU (not measured there), and for the small or odd inputs forward() names."""

    def __init__(self):
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dim() not in (3, 4):
            return super().forward(x)
        h, w = x.shape[-2] // 2, x.shape[-1] // 2  # an odd side loses its last row or column, as in MaxPool2d
        # MaxPool2d's own also where a dimension is 0 or 1 (a map too small, which it refuses; one digit, as
        # `predict` scores; a 1x1 map): with a dimension of 1 the elementwise ops may lay out their result
        # with other strides than MaxPool2d's.
        if min(*x.shape[:-2], h, w) < 2:
            return super().forward(x)
        quads = x[..., : 2 * h, : 2 * w].unflatten(-1, (w, 2)).unflatten(-3, (h, 2))  # (..., h, 2, w, 2), a view
        rows = torch.maximum(quads[..., 0, :, :], quads[..., 1, :, :])
        return torch.maximum(rows[..., 0], rows[..., 1])


def _stage(c_in: int, c_out: int, pool_first: bool) -> list[nn.Module]:
    # No conv bias: the batch norm after it has its own shift. Pooling before the batch
    # norm is a different network from norm-then-pool, not a reordering of the same one
    # (the norm's scale may be negative, and its statistics are those of the pooled
    # maps); it normalises a quarter of the values, and on the 2-core CPU it trained
    # faster and more accurate members on the same seeds (README, *Results*). In the
    # earlier order the ReLU after the pool gives exactly the values of ReLU-then-pool
    # (ReLU is monotonic: max(relu(x)) == relu(max(x)); bit-for-bit the same training,
    # tests/test_train.py) on a quarter of the values.
    conv, pool, norm = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), MaxPool(), nn.BatchNorm2d(c_out)
    return [conv, pool, norm, nn.ReLU(inplace=True)] if pool_first else [conv, norm, pool, nn.ReLU(inplace=True)]


def _head(n_in: int, hidden: int, num_classes: int) -> nn.Module:
    # No bias before the batch norm, as in the stages. On the default stages a hidden layer of 128 adds
    # ~5% to the arithmetic per digit (1152 x 128 multiply-adds against 2.82 million in the
    # convolutions); measured, it is not the default (README, *Results*).
    if not hidden:
        return nn.Linear(n_in, num_classes)
    return nn.Sequential(nn.Linear(n_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, num_classes))


class Net(nn.Module):
    """(B, 1, 28, 28) normalised pixels -> (B, num_classes) logits."""

    def __init__(self, shape: NetShape):
        super().__init__()
        self.shape = shape
        layers: list[nn.Module] = []
        c_in, side = 1, 28
        for width in shape.widths:
            layers += _stage(c_in, width, shape.pool_first)
            c_in, side = width, side // 2
        self.features = nn.Sequential(*layers)
        self.head = _head(c_in * side * side, shape.hidden, shape.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model: Net) -> str:
    """One line: the stages and the parameter count, for summaries and reports."""
    order = "pool+BN" if model.shape.pool_first else "BN+pool"
    stages = " -> ".join(f"conv3x3({w})+{order}+ReLU" for w in model.shape.widths)
    hidden = f" -> linear({model.shape.hidden})+BN+ReLU" if model.shape.hidden else ""
    return f"{stages}{hidden} -> linear({model.shape.num_classes}); {count_parameters(model):,} parameters"


def checkpoint(model: Net) -> dict:
    return {"shape": asdict(model.shape), "state_dict": model.state_dict()}


def from_checkpoint(ckpt: dict) -> Net:
    saved = ckpt["shape"]
    shape = NetShape(widths=tuple(saved["widths"]), num_classes=saved["num_classes"],
                     pool_first=saved.get("pool_first", False),  # absent: a checkpoint from before version 0.2
                     hidden=saved.get("hidden", 0))  # absent: a checkpoint from before version 0.4
    model = Net(shape)
    model.load_state_dict(ckpt["state_dict"])
    return model
