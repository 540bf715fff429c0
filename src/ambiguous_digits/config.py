"""The typed settings: the recipe (what decides the numbers) apart from the invocation (where and how it runs).

A `Recipe` is saved beside every output and read back by later commands; an
`Invocation` (out, force, device, threads, workers, backend) is never part of a result.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# --dataset: a published data set by name, or the user's own files as FORMAT:PATH.
PUBLISHED_DATASETS = ("mnist", "fashion-mnist")
USER_FORMATS = ("idx", "npz")
# Every data set is 28x28 grayscale: the network's stages are sized for it.
IMAGE_SIDE = 28
# Mean and std of MNIST's training pixels in [0, 1]; kept for every data set, since the first batch norm
# absorbs any other offset and scale.
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081
# Each conv stage halves the image side (28 -> 14 -> 7 -> 3 -> 1; the first convolution unpadded: 26 -> 13 -> 6 -> 3
# -> 1): at most 4 stages.
MAX_STAGES = 4
# The first convolution's zero padding (Recipe.pad_first): 0 ("valid", 28 -> 26 -> pooled 13) or 1 (28 -> 28 -> 14).
PAD_FIRST = (0, 1)
# Images per scoring chunk: small on a CPU, where a chunk's activations then stay in cache.
EVAL_BATCH_CPU = 64
EVAL_BATCH_GPU = 1000
# Where training jobs run: on this machine (backend.local_workers at a time), or as tasks on a Ray cluster.
BACKENDS = ("local", "ray")
# The `experiment` repeats' seeds come from their own stream of the base seed, apart from members and folds.
EXPERIMENT_STREAM = 2**63
# Images in the canonical splits of both published data sets: flags are checked before any data are loaded.
PUBLISHED_TRAIN_IMAGES = 60000
PUBLISHED_TEST_IMAGES = 10000
# The top-K rankings (scores.RANKINGS), named here so settings are checked without the scoring code.
RANKING_NAMES = ("confident_wrong", "least_confident", "margin", "entropy", "ambiguity")
SPLITS = ("test", "train")
# Each split's limit flag, and what the messages call its images.
LIMIT_FLAGS = {"test": "--test-limit", "train": "--train-limit"}
IMAGES_OF = {"test": "test", "train": "training"}
PRECISIONS = ("auto", "bf16", "fp32")


# numpy's seed sequences take only non-negative integers, scikit-learn's random_state only those below 2**32.
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A bad setting; the message names the flag and what is wrong."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a run's numbers: the data, the network, the training and the seeds."""

    dataset: str = "mnist"
    class_names: tuple[str, ...] | None = None  # None: the data set's own (digits for MNIST)
    train_limit: int | None = None  # the first N training images only (smoke tests)
    test_limit: int | None = None
    seed: int = 0
    # Four: on 2 cores they train in two rounds of two, not three: 0.69x the whole analysis's time, the ensemble as
    # accurate as six within the seeds' spread, its NLL 5% higher (docs/lab-notebook.md, 0.14).
    members: int = 4
    epochs: int = 8
    batch_size: int = 256
    lr: float = 0.2  # the one-cycle schedule's peak
    weight_decay: float = 5e-4
    widths: tuple[int, ...] = (16, 32, 128)
    hidden: int = 0  # units of a linear-BN-ReLU layer before the output layer; 0: none
    # 0: the first convolution leaves out the 26 x 26 outputs' padded ring, so every stage works on a smaller map
    # (about a fifth less arithmetic a step) and no pixel is dropped (docs/lab-notebook.md, 0.13). Saved before 0.13: 1.
    pad_first: int = 0
    augment: bool = True
    precision: str = "auto"  # bf16 autocast where the hardware has it
    # Member m trains on the training digits outside fold m of `members` folds, so every training digit is
    # out-of-sample for one member: the run audits both splits itself (docs/method.md, "Cross-fitting").
    cross_fit: bool = True
    # The measured recipe (RECIPES) the other fields start from, before any typed flag.
    starts_from: str = "mnist"

    def __post_init__(self) -> None:
        for flag, value in (("--members", self.members), ("--epochs", self.epochs),
                            ("--batch-size", self.batch_size), ("--lr", self.lr)):
            _check_positive(flag, value)
        if not 0 <= self.weight_decay < math.inf:  # also refuses NaN
            raise ConfigError(f"--weight-decay: must be >= 0 and finite, got {self.weight_decay}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed: must be between 0 and {MAX_SEED}, got {self.seed}")
        _check_dataset(self.dataset)
        if self.class_names is not None:
            _check_class_names(self.class_names)
        self._check_limits()
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision: expected auto, bf16 or fp32, got {self.precision!r}")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 0:
            raise ConfigError(f"--hidden: expected 0 (none) or a positive number of units, got {self.hidden!r}")
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ConfigError(f"--widths: expected positive channel counts, got {self.widths}")
        if isinstance(self.pad_first, bool) or not isinstance(self.pad_first, int) or self.pad_first not in PAD_FIRST:
            raise ConfigError(f"--pad-first: expected 0 or 1, got {self.pad_first!r}")
        if self.last_side < 1:
            raise ConfigError(f"--widths: at most {MAX_STAGES} stages fit a {IMAGE_SIDE}-pixel digit, "
                              f"got {len(self.widths)}")
        if self.batch_size < 2 and self.norm_needs_two:
            raise ConfigError(f"--batch-size: must be at least 2 with --hidden or {MAX_STAGES} --widths stages (their "
                              f"batch norm cannot train on one digit), got {self.batch_size}")

    @property
    def published(self) -> bool:
        return self.dataset in PUBLISHED_DATASETS

    @property
    def test_digits(self) -> int | None:
        """How many test images a run scores, when known before any data are loaded (None: user data)."""
        return self.test_limit or (PUBLISHED_TEST_IMAGES if self.published else None)

    def limit(self, split: str) -> int | None:
        """--test-limit or --train-limit, by split (SPLITS)."""
        return self.test_limit if split == "test" else self.train_limit

    @property
    def train_digits(self) -> int | None:
        return self.train_limit or (PUBLISHED_TRAIN_IMAGES if self.published else None)

    @property
    def norm_needs_two(self) -> bool:
        """Whether a batch norm sees one value per channel per digit (a hidden layer's, or a last stage of
        1 x 1), so cannot train on a batch of one digit."""
        return bool(self.hidden) or self.last_side == 1

    @property
    def last_side(self) -> int:
        """The side of the last stage's maps (3 for the default: 28 -> 26 -> 13 -> 6 -> 3)."""
        return last_side(len(self.widths), self.pad_first)

    def _check_limits(self) -> None:
        for flag, limit, most in (("--train-limit", self.train_limit, PUBLISHED_TRAIN_IMAGES),
                                  ("--test-limit", self.test_limit, PUBLISHED_TEST_IMAGES)):
            if limit is not None:
                _check_positive(flag, limit)
                if self.published and limit > most:
                    raise ConfigError(f"{flag}: {self.dataset} has {most} images there, got {limit}")

    @property
    def holdout_folds(self) -> int:
        """Folds of the training set, one held out by each member; 0: every member trains on every digit
        (no cross-fitting asked for, or one member, which would leave its own fold unseen by all)."""
        return self.members if self.cross_fit and self.members >= 2 else 0

    def member_seeds(self, fold: int | None = None) -> list[int]:
        """One independent seed per ensemble member (of one audit fold), spawned in order from the base seed."""
        root = np.random.SeedSequence(self.seed if fold is None else [self.seed, 1 + fold])
        return [int(s.generate_state(1)[0]) for s in root.spawn(self.members)]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Recipe":
        d = dict(d)
        d.setdefault("cross_fit", False)  # saved before 0.8: its members trained on every training digit
        d.setdefault("starts_from", "mnist")  # saved before 0.9: every run started from MNIST's recipe
        d.setdefault("pad_first", 1)  # saved before 0.13: the first convolution padded
        d["widths"] = tuple(d["widths"])
        if d.get("class_names") is not None:
            d["class_names"] = tuple(d["class_names"])
        return cls(**d)


# The measured recipes, as changes to Recipe's defaults (MNIST's). Fashion-MNIST under-fits with MNIST's
# augmentation (91.51 +- 0.20%, 3 seeds); without it, wider and longer: 93.72 +- 0.11% (docs/results.md).
# Its recipe was measured with the first convolution padded, and keeps it.
# Fashion-MNIST keeps the six members it was measured with: four gave 93.23% on seed 0 (docs/lab-notebook.md, 0.14).
RECIPES: dict[str, dict] = {"mnist": {}, "fashion-mnist": {"augment": False, "epochs": 10, "widths": (24, 48, 128),
                                                           "pad_first": 1, "members": 6}}
# The settings a recipe decides; typing any of them keeps a user's data from the validation choice.
RECIPE_KNOBS = ("augment", "epochs", "widths", "pad_first", "members")


def paddings(stages: int, pad_first: int) -> tuple[int, ...]:
    """Each stage's 3 x 3 convolution's zero padding: the first's is pad_first, every later one's 1."""
    return (pad_first,) + (1,) * (stages - 1)


def last_side(stages: int, pad_first: int) -> int:
    """The side of the last stage's maps: each 3 x 3 convolution loses 2 - 2 x its padding, each 2 x 2 pool halves
    the side, rounding down."""
    side = IMAGE_SIDE
    for pad in paddings(stages, pad_first):
        side = (side - 2 + 2 * pad) // 2
    return side


def start_recipe(given: dict) -> tuple[Recipe, bool]:
    """The recipe from the typed flags (`given`: Recipe's fields) over their data set's measured recipe, and whether
    it is still to be chosen on a validation split (recipes.choose: a user's data set, none of RECIPE_KNOBS typed)."""
    dataset = given.get("dataset", Recipe.dataset)
    name = dataset if dataset in RECIPES else "mnist"
    recipe = Recipe(**{**RECIPES[name], "starts_from": name, **given})
    return recipe, dataset not in PUBLISHED_DATASETS and not any(k in given for k in RECIPE_KNOBS)


def measured_choice(recipe: Recipe) -> dict:
    """config.json's recipe_choice for a recipe not chosen on a validation split."""
    return {"by": f"measured for {recipe.starts_from}, with any recipe flag typed over it"}


@dataclass(frozen=True)
class RunOutputs:
    """What a `run` writes beyond its probabilities: which rankings get a top-K list, and K."""

    top: int = 10
    rankings: tuple[str, ...] = RANKING_NAMES

    def __post_init__(self) -> None:
        _check_positive("--top", self.top)
        unknown = [name for name in self.rankings if name not in RANKING_NAMES]
        if unknown or not self.rankings:
            raise ConfigError(f"--rankings: unknown ranking {', '.join(map(repr, unknown)) or '(none given)'}; "
                              f"choose from {', '.join(RANKING_NAMES)}")

    def check_top(self, test_images: int | None) -> None:
        """The top-K lists must fit in the test images scored (None: not known yet)."""
        if test_images is not None and self.top > test_images:
            raise ConfigError(f"--top: {self.top} is more than the {test_images} test images scored")

    @classmethod
    def from_json(cls, d: dict) -> "RunOutputs":
        return cls(top=d["top"], rankings=tuple(d["rankings"]))


@dataclass(frozen=True)
class AuditPlan:
    """An audit's own settings: K folds over one split, and the contact sheet's size."""

    folds: int = 5
    split: str = "test"
    top: int = 30  # a page of suspects to look at

    def __post_init__(self) -> None:
        _check_positive("--top", self.top)
        if self.folds < 2:
            raise ConfigError(f"--folds: need at least 2 folds, got {self.folds}")
        if self.split not in SPLITS:
            raise ConfigError(f"--split: expected test or train, got {self.split!r}")

    def check_folds(self, images: int | None) -> None:
        """Each of the K folds must hold an image of the split (None: not known yet)."""
        if images is not None and images < 2:  # no K fits: the limit (or the data) is what is short
            raise ConfigError(f"{LIMIT_FLAGS[self.split]}: {images} {IMAGES_OF[self.split]} image(s) to audit; K-fold "
                              "cross-validation needs 2 or more")
        if images is not None and self.folds > images:
            raise ConfigError(f"--folds: need 2 <= K <= {images} images, got {self.folds}")

    def images(self, recipe: Recipe) -> int | None:
        return recipe.test_digits if self.split == "test" else recipe.train_digits


@dataclass(frozen=True)
class ExperimentPlan:
    """`experiment`'s own settings: repeats per variant, and the second pass on ambiguous training digits."""

    seeds: int = 3
    emphasis_top: int = 1000
    emphasis_factor: int = 4
    emphasis_epochs: int = 2

    def __post_init__(self) -> None:
        for flag, value in (("--seeds", self.seeds), ("--emphasis-top", self.emphasis_top),
                            ("--emphasis-epochs", self.emphasis_epochs)):
            _check_positive(flag, value)
        if self.emphasis_factor < 2:  # 1 would be the uniform second pass, not emphasis
            raise ConfigError(f"--emphasis-factor: must be at least 2, got {self.emphasis_factor}")

    def pairs(self, base_seed: int) -> list[tuple[int, int]]:
        """(first pass, second pass) seeds of each repeat, from the base seed's own stream."""
        root = np.random.SeedSequence([base_seed, EXPERIMENT_STREAM])
        return [tuple(int(w) for w in s.generate_state(2)) for s in root.spawn(self.seeds)]


@dataclass(frozen=True)
class Invocation:
    """Where and how a command runs; changes no number (the backends give the same bytes)."""

    out: Path = Path("results")
    force: bool = False
    data_dir: Path | None = None  # a published data set's cache
    device: str = "auto"
    threads: int | None = None
    workers: int | None = None  # members trained at once here (backend.local_workers; None: one per core)
    backend: str = "local"
    ray_address: str | None = None
    progress: bool = True
    # A resumed local run's members' torch threads, as its first members had them (no flag: rundir.placed_as_before
    # sets it, so --workers may change on a resume and no member's bytes do); None: backend.member_threads decides.
    member_threads: int | None = None

    def __post_init__(self) -> None:
        for flag, value in (("--threads", self.threads), ("--workers", self.workers)):
            if value is not None:
                _check_positive(flag, value)
        assert self.member_threads is None or self.member_threads > 0  # checked where it is read
        if self.workers is not None and self.backend != "local":
            raise ConfigError("--workers: only with --backend local (a Ray cluster places its own tasks)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device: expected auto, cpu or cuda[:N], got {self.device!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend: expected {' or '.join(BACKENDS)}, got {self.backend!r}")
        if self.ray_address is not None:
            if self.backend != "ray":
                raise ConfigError("--ray-address: only meaningful with --backend ray")
            split_address(self.ray_address)

    def check_data_dir(self, recipe: Recipe) -> None:
        if self.data_dir is not None and not recipe.published:
            raise ConfigError(f"--data-dir: caches a published data set ({', '.join(PUBLISHED_DATASETS)}); "
                              f"{recipe.dataset} names its own files")

    def to_json(self) -> dict:
        """What was typed (a resume's member threads are config.json's placement)."""
        d = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items() if k != "member_threads"}


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
