"""The one typed configuration, and the named constants every stage shares."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUM_CLASSES = 10
IMAGE_SIDE = 28
# Mean and std of the MNIST training pixels scaled to [0, 1]; the values every
# MNIST recipe (PyTorch's examples/mnist among them) normalises with.
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081
# Each conv stage halves the image side (28 -> 14 -> 7 -> 3 -> 1): at most 4 stages.
MAX_STAGES = 4
# Test images are scored in chunks so peak memory stays small on a laptop.
EVAL_BATCH = 1000
# Digits in the canonical MNIST splits: flags are checked against them before any
# data is loaded (data.EXPECTED_SHAPES checks the files against them).
MNIST_TRAIN_DIGITS = 60000
MNIST_TEST_DIGITS = 10000
# The top-K rankings (scores.RANKINGS), named here so the config is checked
# without importing the scoring code; tests keep the two in step.
RANKING_NAMES = ("confident_wrong", "least_confident", "margin", "entropy", "ambiguity")


class ConfigError(ValueError):
    """A bad setting; the message names the flag and what is wrong."""


@dataclass(frozen=True)
class Config:
    """Everything one `run` depends on; written next to every output as config.json."""

    out: Path = Path("results")
    data_dir: Path | None = None
    seed: int = 0
    members: int = 5
    epochs: int = 4
    batch_size: int = 256
    lr: float = 0.2
    weight_decay: float = 5e-4
    widths: tuple[int, ...] = (32, 64, 128)
    augment: bool = True
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

    def __post_init__(self) -> None:
        _check_positive("--members", self.members)
        _check_positive("--epochs", self.epochs)
        _check_positive("--batch-size", self.batch_size)
        _check_positive("--top", self.top)
        _check_positive("--lr", self.lr)
        if not self.weight_decay >= 0:  # also refuses NaN
            raise ConfigError(f"--weight-decay: must be >= 0, got {self.weight_decay}")
        if self.split not in ("test", "train"):
            raise ConfigError(f"--split: expected test or train, got {self.split!r}")
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
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ConfigError(f"--widths: expected positive channel counts, got {self.widths}")
        if IMAGE_SIDE >> len(self.widths) < 1:  # each stage halves the side: 28, 14, 7, 3, 1
            raise ConfigError(f"--widths: at most {MAX_STAGES} stages fit a {IMAGE_SIDE}-pixel digit, "
                              f"got {len(self.widths)}")

    @property
    def test_digits(self) -> int:
        """How many test digits a run scores (known before any data is loaded)."""
        return self.test_limit or MNIST_TEST_DIGITS

    @property
    def train_digits(self) -> int:
        return self.train_limit or MNIST_TRAIN_DIGITS

    def _check_limits(self) -> None:
        for flag, limit, most in (("--train-limit", self.train_limit, MNIST_TRAIN_DIGITS),
                                  ("--test-limit", self.test_limit, MNIST_TEST_DIGITS)):
            if limit is not None:
                _check_positive(flag, limit)
                if limit > most:
                    raise ConfigError(f"{flag}: MNIST has {most} digits there, got {limit}")
        if self.folds < 2:
            raise ConfigError(f"--folds: need at least 2 folds, got {self.folds}")

    def check_top(self) -> None:
        """A `run`'s top-K lists must fit in the test digits it scores (an audit ignores --top)."""
        if self.top > self.test_digits:
            raise ConfigError(f"--top: {self.top} is more than the {self.test_digits} test digits scored")

    def check_folds(self) -> None:
        """An audit's K folds must each hold a digit of its split (a `run` ignores --folds)."""
        digits = self.test_digits if self.split == "test" else self.train_digits
        if self.folds > digits:
            raise ConfigError(f"--folds: need 2 <= K <= {digits} digits, got {self.folds}")

    def member_seeds(self, fold: int | None = None) -> list[int]:
        """One independent seed per ensemble member (of one audit fold), derived from the base seed."""
        root = np.random.SeedSequence(self.seed if fold is None else [self.seed, 1 + fold])
        return [int(s.generate_state(1)[0]) for s in root.spawn(self.members)]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict) -> "Config":
        d = dict(d)
        d["out"] = Path(d["out"])
        d["data_dir"] = Path(d["data_dir"]) if d.get("data_dir") else None
        d["widths"] = tuple(d["widths"])
        d["rankings"] = tuple(d.get("rankings", RANKING_NAMES))
        return cls(**d)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def _check_positive(flag: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{flag}: must be positive, got {value}")
