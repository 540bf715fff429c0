"""bench/networks.py: the shape comparison's ensemble bookkeeping, its flags, and one tiny run."""

import json
import os
import sys
from math import comb
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ is a script folder, not part of the installed package

from bench.networks import ensemble_stats, main, npz_key, parse_args  # noqa: E402


def test_ensembles_average_the_members_probabilities():
    labels = np.array([0, 1])
    right, wrong = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.4, 0.6], [0.6, 0.4]])
    probs = np.stack([right, right, wrong])
    two = ensemble_stats(probs, labels, members=2)
    # {right, right}: both correct; {right, wrong} (twice): means 0.65/0.35 and 0.4/0.6, both correct
    assert two["ensembles"] == two["of"] == 3 and two["accuracy_min"] == two["accuracy_max"] == 1.0
    one = ensemble_stats(probs, labels, members=1)
    assert one["ensembles"] == 3 and one["accuracy_mean"] == pytest.approx(2 / 3) and one["accuracy_min"] == 0.0
    assert one["nll_mean"] == pytest.approx(np.mean([-np.log([0.9, 0.8]).mean()] * 2 + [-np.log([0.4, 0.4]).mean()]))


def test_ensembles_beyond_the_cap_are_a_random_sample_not_the_first_in_order():
    """Member 0 is confidently wrong, the rest barely right, so every ensemble holding member 0 is wrong
    (4 x 0.6 / 5 = 0.48). The first 40 of the 252 combinations in index order all hold it; half of
    all combinations, and so about half of a random 40, do not."""
    labels = np.zeros(20, dtype=np.int64)
    probs = np.tile(np.array([0.6, 0.4], dtype=np.float32), (10, 20, 1))
    probs[0] = [0.0, 1.0]
    stats = ensemble_stats(probs, labels, members=5, limit=40)
    assert stats["of"] == comb(10, 5) == 252 and stats["ensembles"] == 40
    assert stats["accuracy_min"] == 0.0 and stats["accuracy_max"] == 1.0
    assert 0.2 < stats["accuracy_mean"] < 0.8


@pytest.mark.parametrize("bad", [[], ["--net", "16,32,128"], ["--net", "16,32,128:0"], ["--net", "a:6"],
                                 ["--net", "8:1", "--seeds", "0"], ["--net", "8:1", "--seeds", "2", "--members", "3"],
                                 ["--net", "8:1", "--members", "0"], ["--net", "8:1", "--threads", "0"],
                                 ["--net", "8:1", "--test-limit", "0"], ["--net", "8:1", "--net", "8:1"],
                                 ["--net", "8:1", "--out", "x.npz"], ["--net", "8:1", "--out", "/"],
                                 ["--net", "8:1", "--threads", str(os.cpu_count() + 1)],
                                 ["--net", "8:1:sideways"], ["--net", "8:1:"], ["--net", "8:1:norm-pool"],
                                 ["--net", "8:1:fc"], ["--net", "8:1:fcx"], ["--net", "8:1:fc-1"],
                                 ["--net", "8:1:fc0:fc8"], ["--net", "8:1:fc+8"], ["--net", "8:1:fc 8"],
                                 ["--net", "8:1", "--net", "8:1:fc0"], ["--net", "8:1:running"],
                                 ["--net", "8:1:pad"], ["--net", "8:1:pad2"], ["--net", "8:1:pad-1"],
                                 ["--net", "8:1:pad1:pad0"], ["--net", "8:1", "--net", "8:1:pad0"]])
def test_bad_flags_are_refused(bad, capsys):
    with pytest.raises(SystemExit):
        parse_args(bad)
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("networks.py: error: ")


def test_a_tiny_comparison_writes_its_report_and_probabilities(tmp_path, mnist_dir):
    out = tmp_path / "networks.json"
    report = main(["--net", "4,8,8:1", "--net", "8,8:1", "--net", "8,8:1:fc16", "--net", "8,8:1:pad1",
                   "--seeds", "2", "--members", "2",
                   "--threads", "2", "--data-dir", str(mnist_dir), "--train-limit", "512", "--test-limit", "100",
                   "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert list(report["networks"]) == ["4/8/8 x 1 epochs", "8/8 x 1 epochs", "8/8+fc16 x 1 epochs",
                                        "8/8 pad 1 x 1 epochs"]
    saved = np.load(tmp_path / "networks.npz")
    for name, r in report["networks"].items():
        probs = saved[r["npz_key"]]
        assert r["npz_key"] == npz_key(name)
        assert probs.shape == (2, 100, 10) and [m["seed"] for m in r["per_seed"]] == [1, 2]
        accuracy = (probs.argmax(2) == saved["labels"]).mean(1)
        np.testing.assert_allclose([m["accuracy"] for m in r["per_seed"]], accuracy)
        assert r["ensembles"]["ensembles"] == 1
        assert r["ensembles"]["accuracy_mean"] == (probs.mean(0).argmax(1) == saved["labels"]).mean()
    # The same widths with a hidden layer are another network: other probabilities, same seeds.
    plain, hidden, whole = (saved[report["networks"][n]["npz_key"]]
                            for n in ("8/8 x 1 epochs", "8/8+fc16 x 1 epochs", "8/8 pad 1 x 1 epochs"))
    assert not np.allclose(plain, hidden, atol=1e-4) and not np.allclose(plain, whole, atol=1e-4)
    assert [r["pad_first"] for r in report["networks"].values()] == [0, 0, 0, 1]


def test_a_limit_beyond_the_data_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--net", "4:1", "--seeds", "1", "--members", "1", "--test-limit", "20000",
                    "--out", str(tmp_path / "n.json")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "networks.py: error: --test-limit: mnist has 10000 images there, got 20000"
    assert not (tmp_path / "n.json").exists()
