"""The typed settings: each refuses a bad value in one message naming its flag; the recipe apart from the invocation."""

import dataclasses
import math
from pathlib import Path

import pytest

from ambiguous_digits import scores
from ambiguous_digits.config import (RANKING_NAMES, RECIPE_KNOBS, RECIPES, AuditPlan, ConfigError, ExperimentPlan,
                                     Invocation, Recipe, RunOutputs, last_side, split_address, start_recipe)


# ---------------------------------------------------------------------------
# Recipe: what decides the numbers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    ({"members": 0}, "--members: must be positive"),
    ({"epochs": 0}, "--epochs: must be positive"),
    ({"epochs": -2}, "--epochs: must be positive"),
    ({"batch_size": 0}, "--batch-size: must be positive"),
    ({"lr": -1.0}, "--lr: must be positive"),
    ({"lr": math.nan}, "--lr: must be positive"),
    ({"lr": math.inf}, "--lr: must be finite"),
    ({"weight_decay": -1e-4}, "--weight-decay: must be >= 0 and finite"),
    ({"weight_decay": math.nan}, "--weight-decay: must be >= 0 and finite"),
    ({"weight_decay": math.inf}, "--weight-decay: must be >= 0 and finite"),
    ({"seed": -1}, "--seed: must be between 0 and 4294967295, got -1"),
    ({"seed": 2**32}, "--seed: must be between 0 and 4294967295, got 4294967296"),
    ({"dataset": "cifar10"}, "--dataset: expected mnist, fashion-mnist, idx:DIR or npz:FILE, got 'cifar10'"),
    ({"dataset": "npz:"}, "--dataset: expected mnist, fashion-mnist"),
    ({"class_names": ("a",)}, "--class-names: need at least 2 names, got 1"),
    ({"class_names": ("a", "b", "a")}, "--class-names: names must be distinct, a given more than once"),
    ({"class_names": ("a", "", "c")}, "--class-names: every name must be a non-empty one-line string"),
    ({"class_names": ("a", "b\nc")}, "--class-names: every name must be a non-empty one-line string"),
    ({"train_limit": 0}, "--train-limit: must be positive"),
    ({"train_limit": 60001}, "--train-limit: mnist has 60000 images there, got 60001"),
    ({"test_limit": 10001}, "--test-limit: mnist has 10000 images there, got 10001"),
    ({"dataset": "fashion-mnist", "test_limit": 10001}, "--test-limit: fashion-mnist has 10000 images there"),
    ({"precision": "fp8"}, "--precision: expected auto, bf16 or fp32, got 'fp8'"),
    ({"hidden": -1}, "--hidden: expected 0 (none) or a positive number of units, got -1"),
    ({"hidden": True}, "--hidden: expected 0"),
    ({"hidden": "128"}, "--hidden: expected 0"),  # a hand-edited config.json
    ({"widths": ()}, "--widths: expected positive channel counts"),
    ({"widths": (8, 0, 8)}, "--widths: expected positive channel counts"),
    ({"widths": (8, 8, 8, 8, 8)}, "--widths: at most 4 stages fit a 28-pixel digit, got 5"),
    ({"widths": (8, 8, 8, 8, 8), "pad_first": 1}, "--widths: at most 4 stages fit a 28-pixel digit, got 5"),
    ({"pad_first": 2}, "--pad-first: expected 0 or 1, got 2"),
    ({"pad_first": -1}, "--pad-first: expected 0 or 1, got -1"),
    ({"pad_first": True}, "--pad-first: expected 0 or 1, got True"),
    ({"pad_first": "0"}, "--pad-first: expected 0 or 1, got '0'"),  # a hand-edited config.json
    ({"pad_first": 1.0}, "--pad-first: expected 0 or 1, got 1.0"),
    ({"batch_size": 1, "hidden": 16}, "--batch-size: must be at least 2 with --hidden or 4 --widths stages"),
    ({"batch_size": 1, "widths": (8, 8, 8, 8)}, "--batch-size: must be at least 2"),
])
def test_a_bad_recipe_is_refused_naming_its_flag(fields, message):
    with pytest.raises(ConfigError) as e:
        Recipe(**fields)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_batch_of_one_trains_where_no_batch_norm_sees_one_value_per_channel():
    assert not Recipe(batch_size=1).norm_needs_two  # 3 stages: the last is 3 x 3
    assert Recipe(hidden=8).norm_needs_two and Recipe(widths=(4, 4, 4, 4)).norm_needs_two
    assert Recipe(widths=(4, 4, 4, 4), pad_first=1).norm_needs_two  # 28 -> 14 -> 7 -> 3 -> 1


@pytest.mark.parametrize("stages, pad_first, side", [(3, 0, 3), (3, 1, 3), (2, 0, 6), (2, 1, 7), (4, 0, 1), (1, 0, 13)])
def test_the_last_stage_side_follows_the_first_padding(stages, pad_first, side):
    assert last_side(stages, pad_first) == side  # 28 -> 26 (unpadded) or 28, then halved, rounding down


def test_every_knob_a_recipe_sets_is_one_that_skips_the_validation_choice():
    assert {k for knobs in RECIPES.values() for k in knobs} <= set(RECIPE_KNOBS)
    assert start_recipe({"dataset": "npz:/x.npz"})[1] and not start_recipe({"dataset": "npz:/x.npz", "pad_first": 1})[1]
    assert start_recipe({"dataset": "fashion-mnist"})[0].pad_first == 1 and start_recipe({})[0].pad_first == 0
    assert start_recipe({"dataset": "fashion-mnist"})[0].members == 6 and start_recipe({})[0].members == 4
    assert start_recipe({"dataset": "fashion-mnist", "members": 3})[0].members == 3
    assert not start_recipe({"dataset": "npz:/x.npz", "members": 3})[1]


def test_a_recipe_saved_before_0_13_reads_back_with_the_first_convolution_padded():
    saved = Recipe().to_json()
    del saved["pad_first"]
    assert Recipe.from_json(saved).pad_first == 1 and Recipe.from_json(Recipe().to_json()).pad_first == 0


def test_user_data_have_no_published_limits():
    r = Recipe(dataset="npz:/data/mine.npz", train_limit=70000, test_limit=20000)
    assert not r.published and (r.train_digits, r.test_digits) == (70000, 20000)
    assert Recipe(dataset="idx:/data/mine").test_digits is None  # known only once loaded
    assert (Recipe().train_digits, Recipe().test_digits) == (60000, 10000)
    assert Recipe(test_limit=300).test_digits == 300


def test_a_recipe_round_trips_through_its_json():
    r = Recipe(dataset="npz:/d.npz", class_names=("cat", "dog"), widths=(4, 8, 8), hidden=64, seed=3,
               augment=False, precision="fp32", test_limit=50)
    assert Recipe.from_json(r.to_json()) == r and Recipe.from_json(Recipe().to_json()) == Recipe()
    assert Recipe.from_json(Recipe(hidden=64).to_json()).hidden == 64
    with pytest.raises(ConfigError, match="--hidden: expected 0"):
        Recipe.from_json({**Recipe().to_json(), "hidden": "128"})  # a hand-edited config.json


def test_the_recipe_holds_nothing_of_the_invocation():
    """Where and how a command runs never decides a number: no field of one is a field of the other."""
    recipe = {f.name for f in dataclasses.fields(Recipe)}
    invocation = {f.name for f in dataclasses.fields(Invocation)}
    assert not recipe & invocation
    assert {"out", "force", "data_dir", "device", "threads", "backend"} <= invocation
    assert not {"out", "device", "threads", "backend", "top", "rankings", "folds", "split"} & set(Recipe().to_json())


def test_member_seeds_are_derived_from_the_base_seed_one_per_member_and_fold():
    r = Recipe(seed=0, members=4)
    seeds = r.member_seeds()
    assert seeds == r.member_seeds() and len(set(seeds)) == 4
    assert seeds != Recipe(seed=1, members=4).member_seeds()
    assert Recipe(seed=0, members=2).member_seeds() == seeds[:2]  # a member's seed never depends on how many
    folds = [r.member_seeds(fold=f) for f in range(3)]
    flat = [s for fold in folds for s in fold]
    assert len(set(flat)) == 12 and not set(flat) & set(seeds)


# ---------------------------------------------------------------------------
# RunOutputs, AuditPlan, ExperimentPlan: each command's own settings
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda: RunOutputs(top=0), "--top: must be positive"),
    (lambda: RunOutputs(top=-3), "--top: must be positive"),
    (lambda: RunOutputs(rankings=("margin", "nope")), "--rankings: unknown ranking 'nope'; choose from"),
    (lambda: RunOutputs(rankings=()), "--rankings: unknown ranking (none given)"),
    (lambda: AuditPlan(folds=1), "--folds: need at least 2 folds, got 1"),
    (lambda: AuditPlan(split="validation"), "--split: expected test or train, got 'validation'"),
    (lambda: AuditPlan(top=0), "--top: must be positive"),
    (lambda: ExperimentPlan(seeds=0), "--seeds: must be positive"),
    (lambda: ExperimentPlan(emphasis_top=-3), "--emphasis-top: must be positive"),
    (lambda: ExperimentPlan(emphasis_epochs=0), "--emphasis-epochs: must be positive"),
    (lambda: ExperimentPlan(emphasis_factor=1), "--emphasis-factor: must be at least 2, got 1"),
])
def test_a_bad_command_setting_is_refused_naming_its_flag(make, message):
    with pytest.raises(ConfigError) as e:
        make()
    assert message in str(e.value)


def test_the_top_k_lists_must_fit_the_test_images_scored():
    RunOutputs(top=300).check_top(300)
    RunOutputs(top=10**6).check_top(None)  # user data: checked once loaded
    with pytest.raises(ConfigError, match="--top: 301 is more than the 300 test images scored"):
        RunOutputs(top=301).check_top(300)


def test_run_outputs_round_trip_through_json():
    o = RunOutputs(top=5, rankings=("margin", "confident_wrong"))
    assert RunOutputs.from_json({"top": 5, "rankings": ["margin", "confident_wrong"]}) == o


def test_each_fold_must_hold_an_image_of_the_split():
    plan = AuditPlan(folds=5)
    plan.check_folds(5)
    plan.check_folds(None)
    with pytest.raises(ConfigError, match=r"--folds: need 2 <= K <= 4 images, got 5"):
        plan.check_folds(4)
    r = Recipe(train_limit=120, test_limit=10)
    assert (AuditPlan(split="test").images(r), AuditPlan(split="train").images(r)) == (10, 120)


def test_experiment_seeds_are_derived_recorded_and_apart_from_the_members():
    plan = ExperimentPlan(seeds=3)
    seeds = plan.pairs(0)
    assert seeds == plan.pairs(0) and seeds != plan.pairs(1) and len(seeds) == 3
    assert ExperimentPlan(seeds=1).pairs(0) == seeds[:1]
    flat = [s for pair in seeds for s in pair]
    assert len(set(flat)) == 6 and not set(flat) & set(Recipe(seed=0, members=6).member_seeds())


def test_ranking_names_in_the_config_are_the_scoring_ones():
    assert RANKING_NAMES == tuple(scores.RANKINGS)


# ---------------------------------------------------------------------------
# Invocation: where and how
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    ({"threads": 0}, "--threads: must be positive"),
    ({"device": "tpu"}, "--device: expected auto, cpu or cuda[:N], got 'tpu'"),
    ({"backend": "spark"}, "--backend: expected local or ray, got 'spark'"),
    ({"ray_address": "head:6379"}, "--ray-address: only meaningful with --backend ray"),
    ({"backend": "ray", "ray_address": "head"}, "--ray-address: expected HOST:PORT"),
    ({"backend": "ray", "ray_address": "head:99999"}, "--ray-address: expected HOST:PORT"),
])
def test_a_bad_invocation_is_refused_naming_its_flag(fields, message):
    with pytest.raises(ConfigError) as e:
        Invocation(**fields)
    assert message in str(e.value)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_the_devices_a_command_takes(device):
    assert Invocation(device=device).device == device


def test_a_data_cache_only_for_a_published_data_set():
    inv = Invocation(data_dir=Path("/cache"))
    inv.check_data_dir(Recipe(dataset="fashion-mnist"))
    with pytest.raises(ConfigError, match="--data-dir: caches a published data set .* npz:/d.npz names its own"):
        inv.check_data_dir(Recipe(dataset="npz:/d.npz"))
    Invocation().check_data_dir(Recipe(dataset="npz:/d.npz"))


def test_an_invocation_is_recorded_as_plain_json():
    d = Invocation(out=Path("/runs/a"), data_dir=Path("/cache"), backend="ray", ray_address="[::1]:6379").to_json()
    assert d["out"] == "/runs/a" and d["data_dir"] == "/cache" and d["ray_address"] == "[::1]:6379"


@pytest.mark.parametrize("address, parsed", [("head:6379", ("head", 6379)), ("10.0.0.2:1", ("10.0.0.2", 1)),
                                             ("[::1]:6379", ("::1", 6379))])
def test_a_ray_address_is_host_and_port(address, parsed):
    assert split_address(address) == parsed


@pytest.mark.parametrize("address", ["head", ":6379", "head:0", "head:x", "head:65536", "[]:1"])
def test_a_ray_address_without_host_or_port_names_the_flag(address):
    with pytest.raises(ConfigError, match="--ray-address: expected HOST:PORT"):
        split_address(address)
