"""The training-speed benchmark: the reference net, the time bookkeeping, and one tiny end-to-end run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ is a script folder, not part of the installed package

from bench.train_speed import (  # noqa: E402
    Point, ReferenceNet, TrainClock, extrapolate, parse_args, time_ratio, time_to_stay_at_target, time_to_target,
)

TRAINER_KEYS = {"epochs", "train_seconds", "time_to_target_s", "time_to_stay_at_target_s", "final_test_accuracy",
                "test_nll", "test_ece", "inference_images_per_s", "inference_images_per_s_median", "curve",
                "flops_per_train_image", "parameters", "precision",
                "train_images_per_s", "full_epochs", "full_is_extrapolated", "train_seconds_full",
                "peak_rss_mib", "achieved_flops_per_s", "peak_fraction"}
REPORT_KEYS = {"mode", "target_accuracy", "machine", "limits", "peak_flops_per_s", "time_to_target_ratio",
               "ratio_is_lower_bound", "reference", "ours"}


# ---------------------------------------------------------------- the reference network
def test_reference_net_returns_logits_per_image():
    assert ReferenceNet()(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_reference_net_has_the_pytorch_examples_parameter_count():
    # conv1 320, conv2 18,496, fc1 1,179,776, fc2 1,290 (weights + biases), as in PyTorch's example
    assert [p.numel() for p in ReferenceNet().parameters()] == [288, 32, 18_432, 64, 1_179_648, 128, 1_280, 10]
    assert sum(p.numel() for p in ReferenceNet().parameters()) == 1_199_882


# ---------------------------------------------------------------- time-to-target bookkeeping
CURVE = [Point(1, 10.0, 0.980), Point(2, 20.0, 0.9925), Point(3, 30.0, 0.995)]


@pytest.mark.parametrize("curve, expected", [
    (CURVE, 20.0),  # reached at a middle point, and the later points do not matter
    (CURVE[:1], None),  # never reached
    ([Point(1, 10.0, 0.99), Point(2, 20.0, 0.992), Point(3, 30.0, 0.999)], 20.0),  # exactly at the target
    ([], None),
])
def test_time_to_target_is_the_first_point_at_or_above_it(curve, expected):
    assert time_to_target(curve, 0.992) == expected


@pytest.mark.parametrize("curve, expected", [
    (CURVE, 20.0),  # reached and kept
    ([Point(1, 10.0, 0.993), Point(2, 20.0, 0.990), Point(3, 30.0, 0.994), Point(4, 40.0, 0.995)], 30.0),  # a lucky look
    ([Point(1, 10.0, 0.993), Point(2, 20.0, 0.990)], None),  # ends below
    ([], None),
])
def test_time_to_stay_at_target_ignores_a_crossing_that_does_not_last(curve, expected):
    assert time_to_stay_at_target(curve, 0.992) == expected


class FakeTime:
    """A clock whose reading only moves when the test says so."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_train_clock_stops_while_evaluating():
    now = FakeTime()
    clock = TrainClock(now)
    now.t += 2  # train 2 s
    with clock.paused() as seconds:
        now.t += 5  # evaluate 5 s
    assert seconds == 2
    now.t += 3  # train 3 s more
    with clock.paused() as seconds:
        now.t += 7
    assert seconds == 5 and clock.seconds() == 5


def test_extrapolation_uses_the_mean_epoch_time():
    assert extrapolate(30.0, 2, 14) == pytest.approx(210.0)
    assert extrapolate(12.0, 4, 4) == pytest.approx(12.0)


@pytest.mark.parametrize("ref, ours, expected", [
    ({"time_to_target_s": 60.0, "train_seconds": 90.0}, {"time_to_target_s": 20.0}, (3.0, False)),
    ({"time_to_target_s": None, "train_seconds": 90.0}, {"time_to_target_s": 30.0}, (3.0, True)),
    ({"time_to_target_s": 60.0, "train_seconds": 90.0}, {"time_to_target_s": None}, (None, False)),
])
def test_time_ratio_is_reference_over_ours_or_a_lower_bound(ref, ours, expected):
    assert time_ratio(ref, ours) == expected


@pytest.mark.parametrize("bad", [["--threads", "0"], ["--quick-epochs", "-1"], ["--train-limit", "0"],
                                 ["--worker", "ours"], ["--worker", "nobody", "--json", "x.json"]])
def test_bad_flags_are_refused(bad):
    with pytest.raises(SystemExit):
        parse_args(bad)


@pytest.mark.parametrize("bad", [["--nodes", "0"], ["--members", "0"], ["--threads", "-1"],
                                 ["--nodes", "1", str(os.cpu_count() + 1)],
                                 ["--nodes", "1", "--threads", str(os.cpu_count() + 1)]])
def test_ray_scaling_refuses_bad_flags_and_more_nodes_than_cores(bad, capsys):
    """With more nodes (x threads) than cores, the rows would not share the same cores."""
    from bench import ray_scaling

    assert ray_scaling.parse_args(["--nodes", "1", str(os.cpu_count())]).nodes == [1, os.cpu_count()]
    with pytest.raises(SystemExit):
        ray_scaling.parse_args(bad)
    err = capsys.readouterr().err
    assert f"error: {bad[0]} " in err or f"error: {bad[0]}:" in err  # argparse's usage line names every flag
    if str(os.cpu_count() + 1) in bad:
        assert "cores" in err


# ---------------------------------------------------------------- end to end, on a tiny slice
def test_smoke_run_writes_a_complete_report(tmp_path, mnist_dir):
    # 512 digits: OneCycleLR needs a few steps per phase (256 digits = 4 steps in all fails).
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "bench" / "train_speed.py"), "--quick", "--quick-epochs", "1",
           "--train-limit", "512", "--test-limit", "128", "--data-dir", str(mnist_dir), "--out", str(out)]
    printed = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    report = json.loads(out.read_text())
    assert set(report) == REPORT_KEYS and report["mode"] == "quick"
    assert set(report["machine"]) == {"cpu", "cores", "threads", "torch"}
    assert set(report["peak_flops_per_s"]) == {"fp32", "bf16"}
    for name in ("reference", "ours"):
        r = report[name]
        assert set(r) == TRAINER_KEYS, name
        assert r["train_seconds"] > 0 and r["train_images_per_s"] > 0 and r["flops_per_train_image"] > 0
        assert 0 <= r["final_test_accuracy"] <= 1 and r["peak_rss_mib"] > 0
        assert r["curve"] and all(set(p) == {"epochs_done", "train_seconds", "test_accuracy"} for p in r["curve"])
        assert [p["train_seconds"] for p in r["curve"]] == sorted(p["train_seconds"] for p in r["curve"])
        assert r["curve"][-1]["test_accuracy"] == r["final_test_accuracy"]  # the returned model ends the curve
        assert r["curve"][-1]["train_seconds"] == r["train_seconds"]
    assert report["reference"]["epochs"] == 1 and report["reference"]["full_is_extrapolated"]
    assert report["reference"]["parameters"] == 1_199_882
    assert "extrapolated to 14 epochs" in printed and "not reached in" in printed
