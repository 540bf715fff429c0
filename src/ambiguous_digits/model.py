"""The CNN: a few conv-BN-pool-ReLU stages and one linear layer. Returns logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NetShape:
    """The network's shape; saved inside each checkpoint so any stage can rebuild it."""

    num_classes: int  # K, from the data set (10 for MNIST)
    widths: tuple[int, ...] = (16, 32, 128)


def _stage(c_in: int, c_out: int) -> list[nn.Module]:
    # No conv bias: the batch norm right after it has its own shift. Max-pool comes
    # before the ReLU: ReLU is monotonic, so max(relu(x)) == relu(max(x)) exactly, and
    # the ReLU runs on a quarter of the values. Training is bit-for-bit the same as
    # ReLU-then-pool (tests/test_train.py) and a training step ~10-15% faster on CPU.
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
    ]


class Net(nn.Module):
    """(B, 1, 28, 28) normalised pixels -> (B, num_classes) logits."""

    def __init__(self, shape: NetShape):
        super().__init__()
        self.shape = shape
        layers: list[nn.Module] = []
        c_in, side = 1, 28
        for width in shape.widths:
            layers += _stage(c_in, width)
            c_in, side = width, side // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * side * side, shape.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model: Net) -> str:
    """One line: the stages and the parameter count, for summaries and reports."""
    stages = " -> ".join(f"conv3x3({w})+BN+pool+ReLU" for w in model.shape.widths)
    return f"{stages} -> linear({model.shape.num_classes}); {count_parameters(model):,} parameters"


def checkpoint(model: Net) -> dict:
    return {"shape": asdict(model.shape), "state_dict": model.state_dict()}


def from_checkpoint(ckpt: dict) -> Net:
    shape = NetShape(widths=tuple(ckpt["shape"]["widths"]), num_classes=ckpt["shape"]["num_classes"])
    model = Net(shape)
    model.load_state_dict(ckpt["state_dict"])
    return model
