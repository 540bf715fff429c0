"""The data: `load_dataset`, the one entry point for any --dataset, and the names other modules use.

idx: the IDX format. published: MNIST and Fashion-MNIST, fetched, verified and
cached. user: the user's own idx:DIR or npz:FILE. dataset: the Dataset record.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

from .dataset import DataError, Dataset
from .idx import FILES, idx_bytes, read_idx
from .published import PUBLISHED, cache_source, default_data_dir, load_mnist, load_published
from .user import load_user

__all__ = ["Dataset", "DataError", "load_dataset", "load_published", "load_mnist", "PUBLISHED", "FILES",
           "cache_source", "default_data_dir", "idx_bytes", "read_idx"]


def load_dataset(name: str, data_dir: Path | None = None, *, class_names: Sequence[str] | None = None,
                 log: Callable[[str], None] = print, progress: bool = True) -> Dataset:
    """The data set a --dataset value names: 'mnist', 'fashion-mnist', 'idx:DIR' or 'npz:FILE'.

    `data_dir` caches a published data set (None: its default cache). `class_names`,
    when given, must number K, the data set's classes. Raises DataError (one line) on
    anything missing, corrupt, unverifiable or malformed.
    """
    if name in PUBLISHED:
        ds = load_published(name, data_dir, log=log, progress=progress)
        return ds if class_names is None else _renamed(ds, class_names)
    return load_user(name, class_names, log=log)  # validated there: no checksums to compare


def _renamed(ds: Dataset, class_names: Sequence[str]) -> Dataset:
    if len(class_names) != ds.num_classes:
        raise DataError(f"--class-names: {len(class_names)} names given, but {ds.name} has {ds.num_classes} classes")
    return dataclasses.replace(ds, class_names=tuple(class_names))
