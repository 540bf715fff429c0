"""The one typed configuration, and the named constants every stage shares."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# --dataset: a published data set by name (data.PUBLISHED), or the user's own
# files as FORMAT:PATH ('idx:DIR' with the four IDX files, 'npz:FILE').
PUBLISHED_DATASETS = ("mnist", "fashion-mnist")
USER_FORMATS = ("idx", "npz")
# Every data set is 28x28 grayscale: the network's stages are sized for it.
IMAGE_SIDE = 28
# Mean and std of the MNIST training pixels scaled to [0, 1]; the values every
# MNIST recipe (PyTorch's examples/mnist among them) normalises with. Kept for
# every data set: the batch norm after the first conv absorbs any other offset
# and scale, so per-data-set constants would be tuning for nothing.
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081
# Each conv stage halves the image side (28 -> 14 -> 7 -> 3 -> 1): at most 4 stages.
MAX_STAGES = 4
# Images are scored in chunks. On a CPU small chunks are faster: a chunk's activations
# stay in cache (the first stage's 16x28x28 maps are 3 MB for 64 digits, 50 MB for
# 1000). Measured on the 2-core build machine with the earlier 32/64/128 network:
# 10.3k images/s in chunks of 64 against 4.9k in chunks of 1000, with bit-identical
# logits. A GPU wants large chunks.
EVAL_BATCH_CPU = 64
EVAL_BATCH_GPU = 1000
# Config.norm_stats: the batch norms' statistics recomputed over the clean training digits, or the
# running averages over the augmented ones that training leaves.
NORM_STATS = ("clean", "running")
# Config.norm_stats of a config from before version 0.5 (which added the field): the averages of training.
NORM_STATS_BEFORE_0_5 = "running"
# Where training jobs run: one after another in this process, or as tasks on a Ray cluster.
BACKENDS = ("local", "ray")
# Seeds of the `experiment` repeats are drawn from their own stream of the base seed,
# apart from the run's members ([seed]) and the audit's folds ([seed, 1 + fold]).
EXPERIMENT_STREAM = 2**63
# Images in the canonical splits of both published data sets (MNIST and Fashion-MNIST
# share them): flags are checked against them before any data is loaded (data.published
# checks the files against them). A user's own data set is checked once loaded.
PUBLISHED_TRAIN_IMAGES = 60000
PUBLISHED_TEST_IMAGES = 10000
# The top-K rankings (scores.RANKINGS), named here so the config is checked
# without importing the scoring code; tests keep the two in step.
RANKING_NAMES = ("confident_wrong", "least_confident", "margin", "entropy", "ambiguity")


class ConfigError(ValueError):
    """A bad setting; the message names the flag and what is wrong."""


def norm_stats_from_clean_digits(augment: bool, norm_stats: str) -> bool:
    """Whether training ends by recomputing the batch norms' statistics over the clean training digits
    (train.recompute_norm_stats): with norm_stats 'clean', after augmented training only (without
    augmentation the averages of training are already those of clean digits)."""
    return augment and norm_stats == "clean"


@dataclass(frozen=True)
class Config:
    """Everything one `run` depends on; written next to every output as config.json."""

    out: Path = Path("results")
    dataset: str = "mnist"
    class_names: tuple[str, ...] | None = None  # None: the data set's own (digits for MNIST)
    data_dir: Path | None = None
    seed: int = 0
    # 6, not 5, since version 0.6: on the default seed 0 the sixth member took the ensemble from 99.62% to
    # 99.66% for ~50 s of training (seeds 1, 2: 99.63% both, from 99.63%, 99.62%); on average it is worth about
    # 0.4 of an error (ensembles of 6 of 34 members 99.645%, of 5 99.642%: README, *Why six members*).
    members: int = 6
    # 8, not 6, since version 0.3: on seeds 1-8, ensembles of 5 gained 0.03 points (99.643% vs 99.616%)
    # and NLL fell 0.0133 -> 0.0123, for time the allocator fix (allocator.py) had freed (README, *Results*).
    epochs: int = 8
    batch_size: int = 256
    lr: float = 0.2
    weight_decay: float = 5e-4
    widths: tuple[int, ...] = (16, 32, 128)
    pool_first: bool = True  # model.NetShape.pool_first; False: the stage order of runs before version 0.2
    # model.NetShape.hidden: units of a linear-BN-ReLU layer before the output layer; 0 (the default):
    # none. Measured with 128 and not made the default: about as accurate, worse calibrated, and its
    # audits ranked the reviewed label errors worse (README, *Results*).
    hidden: int = 0
    augment: bool = True
    # After training with augmentation, where the batch norms' running statistics come from:
    # 'clean' (since version 0.5): every norm but the first recomputes them over the clean training digits
    # (train.recompute_norm_stats); 'running': the averages kept during training, over augmented digits.
    norm_stats: str = "clean"
    top: int = 10
    rankings: tuple[str, ...] = RANKING_NAMES
    folds: int = 5
    split: str = "test"
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    force: bool = False
    backend: str = "local"
    ray_address: str | None = None
    # `experiment` only: repeats per variant, and the second pass on ambiguous training digits.
    seeds: int = 3
    emphasis_top: int = 1000
    emphasis_factor: int = 4
    emphasis_epochs: int = 2

    def __post_init__(self) -> None:
        _check_positive("--members", self.members)
        _check_positive("--seeds", self.seeds)
        _check_positive("--emphasis-top", self.emphasis_top)
        _check_positive("--emphasis-epochs", self.emphasis_epochs)
        if self.emphasis_factor < 2:  # 1 would be the uniform second pass, not emphasis
            raise ConfigError(f"--emphasis-factor: must be at least 2, got {self.emphasis_factor}")
        _check_positive("--epochs", self.epochs)
        _check_positive("--batch-size", self.batch_size)
        _check_positive("--top", self.top)
        _check_positive("--lr", self.lr)
        if not 0 <= self.weight_decay < math.inf:  # also refuses NaN
            raise ConfigError(f"--weight-decay: must be >= 0 and finite, got {self.weight_decay}")
        if self.seed < 0:  # numpy's seed sequences take only non-negative integers
            raise ConfigError(f"--seed: must be >= 0, got {self.seed}")
        if self.split not in ("test", "train"):
            raise ConfigError(f"--split: expected test or train, got {self.split!r}")
        _check_dataset(self.dataset)
        if self.data_dir is not None and self.dataset not in PUBLISHED_DATASETS:
            raise ConfigError(f"--data-dir: caches a published data set ({', '.join(PUBLISHED_DATASETS)}); "
                              f"{self.dataset} names its own files")
        if self.class_names is not None:
            _check_class_names(self.class_names)
        self._check_limits()
        unknown = [name for name in self.rankings if name not in RANKING_NAMES]
        if unknown or not self.rankings:
            raise ConfigError(f"--rankings: unknown ranking {', '.join(map(repr, unknown)) or '(none given)'}; "
                              f"choose from {', '.join(RANKING_NAMES)}")
        if self.threads is not None:
            _check_positive("--threads", self.threads)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device: expected auto, cpu or cuda[:N], got {self.device!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"--precision: expected auto, bf16 or fp32, got {self.precision!r}")
        if self.norm_stats not in NORM_STATS:
            raise ConfigError(f"--norm-stats: expected {' or '.join(NORM_STATS)}, got {self.norm_stats!r}")
        if not isinstance(self.pool_first, bool):  # None or 'false' from a hand-edited config.json
            raise ConfigError(f"pool_first: expected true or false, got {self.pool_first!r}")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 0:
            raise ConfigError(f"--hidden: expected 0 (none) or a positive number of units, got {self.hidden!r}")
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ConfigError(f"--widths: expected positive channel counts, got {self.widths}")
        if IMAGE_SIDE >> len(self.widths) < 1:  # each stage halves the side: 28, 14, 7, 3, 1
            raise ConfigError(f"--widths: at most {MAX_STAGES} stages fit a {IMAGE_SIDE}-pixel digit, "
                              f"got {len(self.widths)}")
        if self.batch_size < 2 and self.norm_needs_two:
            raise ConfigError(f"--batch-size: must be at least 2 with --hidden or {MAX_STAGES} --widths stages (their "
                              f"batch norm cannot train on one digit), got {self.batch_size}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend: expected {' or '.join(BACKENDS)}, got {self.backend!r}")
        if self.ray_address is not None:
            if self.backend != "ray":
                raise ConfigError("--ray-address: only meaningful with --backend ray")
            split_address(self.ray_address)

    @property
    def test_digits(self) -> int | None:
        """How many test images a run scores, when known before any data is loaded (None: user data)."""
        return self.test_limit or (PUBLISHED_TEST_IMAGES if self.dataset in PUBLISHED_DATASETS else None)

    @property
    def train_digits(self) -> int | None:
        return self.train_limit or (PUBLISHED_TRAIN_IMAGES if self.dataset in PUBLISHED_DATASETS else None)

    @property
    def norm_needs_two(self) -> bool:
        """Whether a batch norm of the network sees one value per channel per digit (a hidden layer's, or
        that of a last stage of 1 x 1), so cannot train on a batch of one digit."""
        return bool(self.hidden) or IMAGE_SIDE >> len(self.widths) == 1

    def _check_limits(self) -> None:
        published = self.dataset in PUBLISHED_DATASETS
        for flag, limit, most in (("--train-limit", self.train_limit, PUBLISHED_TRAIN_IMAGES),
                                  ("--test-limit", self.test_limit, PUBLISHED_TEST_IMAGES)):
            if limit is not None:
                _check_positive(flag, limit)
                if published and limit > most:
                    raise ConfigError(f"{flag}: {self.dataset} has {most} images there, got {limit}")
        if self.folds < 2:
            raise ConfigError(f"--folds: need at least 2 folds, got {self.folds}")

    def check_top(self, test_images: int | None = None) -> None:
        """A `run`'s top-K lists must fit in the test images it scores (an audit's sheet takes what there is).

        `test_images`: the loaded count, for user data (unknown before loading).
        """
        n = test_images or self.test_digits
        if n is not None and self.top > n:
            raise ConfigError(f"--top: {self.top} is more than the {n} test images scored")

    def check_folds(self, images: int | None = None) -> None:
        """An audit's K folds must each hold an image of its split (a `run` ignores --folds)."""
        n = images or (self.test_digits if self.split == "test" else self.train_digits)
        if n is not None and self.folds > n:
            raise ConfigError(f"--folds: need 2 <= K <= {n} images, got {self.folds}")

    def member_seeds(self, fold: int | None = None) -> list[int]:
        """One independent seed per ensemble member (of one audit fold), derived from the base seed."""
        root = np.random.SeedSequence(self.seed if fold is None else [self.seed, 1 + fold])
        return [int(s.generate_state(1)[0]) for s in root.spawn(self.members)]

    def experiment_seeds(self) -> list[tuple[int, int]]:
        """(first pass, second pass) seeds of each of the `seeds` experiment repeats, derived from the base seed."""
        root = np.random.SeedSequence([self.seed, EXPERIMENT_STREAM])
        return [tuple(int(w) for w in s.generate_state(2)) for s in root.spawn(self.seeds)]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict) -> "Config":
        d = dict(d)
        d["out"] = Path(d["out"])
        d["data_dir"] = Path(d["data_dir"]) if d.get("data_dir") else None
        d["widths"] = tuple(d["widths"])
        d.setdefault("pool_first", False)  # a config from before version 0.2 trained the earlier stage order
        d.setdefault("hidden", 0)  # one from before version 0.4 (which added the field) trained no hidden layer
        d.setdefault("norm_stats", NORM_STATS_BEFORE_0_5)
        if d.get("class_names") is not None:
            d["class_names"] = tuple(d["class_names"])
        d["rankings"] = tuple(d.get("rankings", RANKING_NAMES))
        return cls(**d)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def split_address(address: str, flag: str = "--ray-address") -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' (a Ray head node's address) -> (host, port); a ConfigError naming the flag otherwise."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"{flag}: expected HOST:PORT (the Ray head node's address), got {address!r}")
    return host, int(port)


def _check_positive(flag: str, value: float) -> None:
    if not value > 0:  # also refuses NaN
        raise ConfigError(f"{flag}: must be positive, got {value}")
    if value == math.inf:  # an infinite step trains to NaN probabilities
        raise ConfigError(f"{flag}: must be finite, got {value}")


def _check_dataset(dataset: str) -> None:
    fmt, sep, path = dataset.partition(":")
    if dataset in PUBLISHED_DATASETS or (sep and fmt in USER_FORMATS and path):
        return
    raise ConfigError(f"--dataset: expected {', '.join(PUBLISHED_DATASETS)}, idx:DIR or npz:FILE, got {dataset!r}")


def _check_class_names(names: tuple[str, ...]) -> None:
    if len(names) < 2:
        raise ConfigError(f"--class-names: need at least 2 names, got {len(names)}")
    if not all(isinstance(n, str) and n.strip() and "\n" not in n for n in names):
        raise ConfigError(f"--class-names: every name must be a non-empty one-line string, got {list(names)}")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"--class-names: names must be distinct, {', '.join(twice)} given more than once")
