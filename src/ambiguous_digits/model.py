"""The CNN: a few conv-pool-BN-ReLU stages, an optional hidden linear-BN-ReLU layer, and the output layer. Returns logits."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .config import last_side, paddings


@dataclass(frozen=True)
class NetShape:
    """The network's shape; saved inside each checkpoint so any stage can rebuild it."""

    num_classes: int  # K, from the data set (10 for MNIST)
    widths: tuple[int, ...] = (16, 32, 128)
    hidden: int = 0  # units of a linear-BN-ReLU layer before the output layer; 0: none
    pad_first: int = 0  # the first convolution's zero padding (config.Recipe.pad_first); nets before 0.13: 1


def _stage(c_in: int, c_out: int, padding: int = 1) -> list[nn.Module]:
    # No conv bias: the batch norm has its own shift. Pooling first normalises a quarter of the values.
    return [nn.Conv2d(c_in, c_out, 3, padding=padding, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


def _head(n_in: int, hidden: int, num_classes: int) -> nn.Module:
    # No bias before the batch norm, as in the stages.
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
        c_in = 1
        for width, pad in zip(shape.widths, paddings(len(shape.widths), shape.pad_first)):
            layers += _stage(c_in, width, pad)
            c_in = width
        self.features = nn.Sequential(*layers)
        side = last_side(len(shape.widths), shape.pad_first)
        self.head = _head(c_in * side * side, shape.hidden, shape.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model: Net) -> str:
    """One line: the stages and the parameter count, for summaries and reports."""
    shape = model.shape
    stages = " -> ".join(f"conv3x3({w}{'' if pad else ', unpadded'})+pool+BN+ReLU"
                         for w, pad in zip(shape.widths, paddings(len(shape.widths), shape.pad_first)))
    hidden = f" -> linear({shape.hidden})+BN+ReLU" if shape.hidden else ""
    return f"{stages}{hidden} -> linear({shape.num_classes}); {count_parameters(model):,} parameters"


def checkpoint(model: Net) -> dict:
    return {"shape": asdict(model.shape), "state_dict": model.state_dict()}


def arrays(model: Net) -> dict[str, np.ndarray]:
    """The net for forward.NumpyNet (np.savez's keywords): each float tensor of its state dict, and its shape as
    JSON under "shape"."""
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items() if v.is_floating_point()}
    return {**state, "shape": np.array(json.dumps(asdict(model.shape)))}


def from_checkpoint(ckpt: dict) -> Net:
    saved = ckpt["shape"]
    model = Net(NetShape(num_classes=saved["num_classes"], widths=tuple(saved["widths"]), hidden=saved["hidden"],
                           pad_first=saved.get("pad_first", 1)))  # saved before 0.13: padded
    model.load_state_dict(ckpt["state_dict"])
    return model
