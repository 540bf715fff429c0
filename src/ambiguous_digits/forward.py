"""The CNN's forward pass in numpy, from the weights a run saves beside each checkpoint (models/member-M.npz).

`predict --device cpu` scores a user's image this way: importing torch alone took 1.5-2.5 s on 2 cores, most of
a call (docs/lab-notebook.md). It computes what model.Net computes in eval mode, in float32
(tests/test_forward.py holds the two together); the weights come from model.arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import PIXEL_MEAN, PIXEL_STD, paddings

# torch's BatchNorm default, which model.Net keeps.
BN_EPS = 1e-5
# Digits a pass unrolls at once: a stage's windows take 9 x side x side x its input's width floats per digit.
CHUNK = 256


@dataclass(frozen=True)
class Norm:
    """An eval-mode batch norm folded into one scale and shift per channel."""

    scale: np.ndarray
    shift: np.ndarray

    @classmethod
    def of(cls, w: dict[str, np.ndarray], prefix: str) -> Norm:
        scale = w[f"{prefix}.weight"] / np.sqrt(w[f"{prefix}.running_var"] + BN_EPS)
        shift = w[f"{prefix}.bias"] - w[f"{prefix}.running_mean"] * scale
        return cls(scale.astype(np.float32), shift.astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:  # channels on the last axis
        return x * self.scale + self.shift


@dataclass(frozen=True)
class NumpyNet:
    """model.Net's eval-mode forward pass: (N, 28, 28) uint8 digits in, maps, features or probabilities out."""

    convs: list[np.ndarray]  # (C_out, C_in * 9) each, the conv kernels unrolled as the windows are
    norms: list[Norm]
    head: list[tuple[np.ndarray, np.ndarray | None, Norm | None]]  # (weight.T, bias, norm after it) per layer
    pad_first: int  # model.NetShape.pad_first

    @classmethod
    def load(cls, path: Path) -> NumpyNet:
        """A net from model.arrays' file (np.savez): its shape as JSON under "shape", the state dict's arrays."""
        with np.load(path, allow_pickle=False) as z:
            w = {k: z[k].astype(np.float32) for k in z.files if k != "shape"}
            shape = json.loads(str(z["shape"]))
        stages = len(shape["widths"])
        # model._stage: conv, pool, norm, relu -> indices 4s and 4s + 2 of `features`.
        convs = [w[f"features.{4 * s}.weight"].reshape(shape["widths"][s], -1) for s in range(stages)]
        norms = [Norm.of(w, f"features.{4 * s + 2}") for s in range(stages)]
        if shape["hidden"]:  # model._head: linear (no bias), norm, relu, linear
            head = [(w["head.0.weight"].T, None, Norm.of(w, "head.1")), (w["head.3.weight"].T, w["head.3.bias"], None)]
        else:
            head = [(w["head.weight"].T, w["head.bias"], None)]
        return cls(convs, norms, head, shape.get("pad_first", 1))  # saved before 0.13: padded

    @property
    def num_classes(self) -> int:
        return self.head[-1][0].shape[1]

    def maps(self, digits: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 -> (N, C, side, side) float32: the last stage's maps, as model.Net.features gives."""
        return np.concatenate([self._maps(digits[start : start + CHUNK]) for start in range(0, len(digits), CHUNK)])

    def _maps(self, digits: np.ndarray) -> np.ndarray:
        x = ((digits.astype(np.float32) / 255 - PIXEL_MEAN) / PIXEL_STD)[..., None]  # channels last
        for kernel, norm, pad in zip(self.convs, self.norms, paddings(len(self.convs), self.pad_first)):
            x = np.maximum(norm(_pool(_conv3x3(x, kernel, pad))), 0)
        return x.transpose(0, 3, 1, 2)

    def features(self, digits: np.ndarray, spatial: str = "mean") -> np.ndarray:
        """(N, D) penultimate features, as train.predict_features gives in float32 (`spatial` the same)."""
        return _features(self.maps(digits), spatial)

    def probs(self, digits: np.ndarray) -> np.ndarray:
        """(N, K) float32 class probabilities, as train.predict_probs gives."""
        return self._probs(self.maps(digits))

    def outputs(self, digits: np.ndarray, spatial: str = "mean") -> tuple[np.ndarray, np.ndarray]:
        """probs and features of the same digits from one pass through the stages."""
        maps = self.maps(digits)
        return self._probs(maps), _features(maps, spatial)

    def _probs(self, maps: np.ndarray) -> np.ndarray:
        x = maps.reshape(len(maps), -1)
        for weight, bias, norm in self.head:
            x = x @ weight if bias is None else x @ weight + bias
            if norm is not None:
                x = np.maximum(norm(x), 0)
        x = np.exp(x - x.max(axis=1, keepdims=True))
        return (x / x.sum(axis=1, keepdims=True)).astype(np.float32)


def _features(maps: np.ndarray, spatial: str) -> np.ndarray:
    return maps.mean(axis=(2, 3)) if spatial == "mean" else maps.reshape(len(maps), -1)


def _conv3x3(x: np.ndarray, kernel: np.ndarray, pad: int = 1) -> np.ndarray:
    """(N, H, W, C) -> (N, H', W', C_out): a 3x3 convolution, zero padding `pad` (1: H' = H; 0: H' = H - 2), no bias."""
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # (N, H', W', C, 3, 3)
    n, h, w, c = windows.shape[:4]
    return (windows.reshape(n * h * w, c * 9) @ kernel.T).reshape(n, h, w, -1)


def _pool(x: np.ndarray) -> np.ndarray:
    """2x2 max pooling, stride 2, an odd last row and column dropped (torch's MaxPool2d(2))."""
    n, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
