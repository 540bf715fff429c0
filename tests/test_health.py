"""The data set's health: planted near-duplicates and leaks found, planted outliers ranked, the classes' numbers, the
map in a real browser, and bad files refused in one line."""

import csv
import json

import numpy as np
import pytest

from ambiguous_digits import cli, health, healthview, manifest, recipes
from ambiguous_digits.config import RECIPES, ConfigError, Recipe, start_recipe

# Slices of real MNIST, with copies planted in them (health_run).
N_TRAIN, N_TEST = 1500, 400
NOISE = 8  # grey levels of Gaussian pixel noise on a noisy copy


def _plant(mnist):
    """Training and test slices with planted copies; returns the arrays, the planted pairs
    {((split, i), (split, j))}, and the planted blank and inverted training digits."""
    rng = np.random.default_rng(7)
    x_tr, y_tr = mnist.x_train[:N_TRAIN].copy(), mnist.y_train[:N_TRAIN].copy()
    x_te, y_te = mnist.x_test[:N_TEST].copy(), mnist.y_test[:N_TEST].copy()
    pairs, slot = set(), iter(range(1000, N_TRAIN))
    sources = {"train": (x_tr, y_tr), "test": (x_te, y_te)}

    def put(src: tuple[str, int], image: np.ndarray, label: int) -> None:
        at = next(slot)
        x_tr[at], y_tr[at] = image, label
        pairs.add((src, ("train", at)))

    for k in range(4):
        x, y = sources["train"]
        put(("train", k), x[k], y[k])  # exact
        put(("train", 10 + k), np.roll(x[10 + k], 1, axis=k % 2), y[10 + k])  # shifted by a pixel
        noisy = np.clip(x[20 + k] + rng.normal(0, NOISE, x[20 + k].shape), 0, 255).astype(np.uint8)
        put(("train", 20 + k), noisy, y[20 + k])  # with pixel noise
        put(("train", 30 + k), x[30 + k], (y[30 + k] + 1) % 10)  # the same image under another label
        xt, yt = sources["test"]
        put(("test", k), xt[k], yt[k])  # a test digit leaked into the training set
        put(("test", 10 + k), np.roll(xt[10 + k], -1, axis=k % 2), yt[10 + k])  # leaked, shifted
    blank, inverted = next(slot), next(slot)
    x_tr[blank] = 0
    x_tr[inverted] = 255 - x_tr[40]
    return (x_tr, y_tr, x_te, y_te), pairs, (blank, inverted)


@pytest.fixture(scope="module")
def health_run(mnist, tmp_path_factory):
    folder = tmp_path_factory.mktemp("health")
    (x_tr, y_tr, x_te, y_te), pairs, odd = _plant(mnist)
    np.savez(folder / "planted.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    out = folder / "run"
    assert cli.main(["run", "--dataset", f"npz:{folder / 'planted.npz'}", "--out", str(out), "--epochs", "2",
                     "--widths", "8,16,32", "--members", "2", "--quiet", "--threads", "1"]) == 0
    return out, pairs, odd


def _found(out) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    with open(out / "duplicates.csv", newline="") as f:
        return [((r["split_a"], int(r["index_a"])), (r["split_b"], int(r["index_b"]))) for r in csv.DictReader(f)]


def test_every_planted_pair_is_found_with_few_false_pairs(health_run):
    out, planted, _ = health_run
    found = {frozenset(p) for p in _found(out)}
    assert {frozenset(p) for p in planted} <= found
    false = found - {frozenset(p) for p in planted}
    assert len(false) <= 0.05 * len(found)


def test_duplicates_table_names_labels_and_leaks(health_run):
    out, planted, _ = health_run
    with open(out / "duplicates.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["split_a", "index_a", "split_b", "index_b", "distance", "same_label"]
    differ = {frozenset(((r["split_a"], int(r["index_a"])), (r["split_b"], int(r["index_b"]))))
              for r in rows if r["same_label"] == "0"}
    assert len(differ) >= 4  # the four relabelled copies
    found = json.loads((out / "health.json").read_text())
    assert found["duplicates"]["leaks"] >= 8
    assert found["duplicates"]["pairs"] == len(rows)
    assert 0 < found["label_health_score"] <= 1
    assert len(found["classes"]) == 10


def test_blank_and_inverted_training_digits_rank_as_outliers(health_run):
    out, _, (blank, inverted) = health_run
    with open(out / "train_dynamics.csv", newline="") as f:
        score = np.array([float(r["outlier_score"]) for r in csv.DictReader(f)])
    ranked = np.argsort(score, kind="stable")  # LOWER = more outlying
    assert blank in ranked[:15] and inverted in ranked[:15]  # of 1,500


def test_report_shows_the_planted_pairs(health_run):
    out, planted, _ = health_run
    html = (out / "report.html").read_text()
    assert 'id="health"' in html and 'id="health-map"' in html
    shown = sum(f'data-pair="{a[0]}:{a[1]}-{b[0]}:{b[1]}"' in html or f'data-pair="{b[0]}:{b[1]}-{a[0]}:{a[1]}"' in html
                for a, b in planted)
    assert shown == min(len(planted), healthview.PAIRS_SHOWN)


def test_aligned_pixels_move_by_a_fraction_as_scipy_does():
    from scipy import ndimage

    rng = np.random.default_rng(3)
    x = rng.random((2, 28, 28)).astype(np.float32)
    dy, dx = np.array([0.3, -1.7]), np.array([-2.6, 0.45])
    got = health._shifted(x, dy, dx)
    for i in range(2):
        want = ndimage.shift(x[i], (dy[i], dx[i]), order=1, mode="constant", cval=0.0)
        assert np.allclose(got[i][3:-3, 3:-3], want[3:-3, 3:-3], atol=1e-5)  # scipy's edges differ; the inside not


def test_aligned_pixels_undo_a_shift():
    digit = np.zeros((28, 28), np.uint8)
    digit[8:20, 12:15] = 255
    moved = np.roll(np.roll(digit, 2, axis=0), -1, axis=1)
    a = health.aligned(np.stack([digit, moved, np.zeros_like(digit)]))
    assert np.linalg.norm(a[0] - a[1]) < 1e-4 * np.linalg.norm(a[0])
    assert np.all(a[2] == 0)  # a blank stays blank


@pytest.mark.parametrize("levels", [2, 3, 4])
def test_thumbnails_pack_four_pixels_a_byte(levels):
    rng = np.random.default_rng(levels)
    images = rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)
    packed = healthview.thumbnails(images, levels)
    assert len(packed) == 3 * 196 // 4
    unpacked = (packed[:, None] >> np.array([6, 4, 2, 0], np.uint8)) & 3
    means = images.reshape(3, 14, 2, 14, 2).astype(np.float32).mean(axis=(2, 4))
    assert np.array_equal(unpacked.ravel(), np.minimum(means * levels / 256, levels - 1).astype(np.uint8).ravel())


def test_place_splits_joined_rows():
    split, index = health.place(np.array([0, 4, 5, 9]), 5)
    assert split.tolist() == ["train", "train", "test", "test"] and index.tolist() == [0, 4, 0, 4]


def test_graph_leaves_each_row_out_of_its_own_neighbours():
    x = np.array([[0.0, 0], [0, 0], [1, 0], [5, 5]], np.float32)  # rows 0 and 1 are exact twins
    idx, dist = health.graph(x, 2)
    assert all(i not in row for i, row in enumerate(idx))
    assert idx[0, 0] == 1 and idx[1, 0] == 0 and dist[0, 0] == 0


def test_class_health_finds_the_overlapping_pair():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 200)
    probs = np.eye(3)[labels] * 0.9 + 0.05
    swap = rng.choice(np.flatnonzero(labels == 1), 40, replace=False)  # a fifth of class 1 reads as class 2
    probs[swap] = [0.01, 0.02, 0.97]
    found = health.class_health(labels, probs, ("a", "b", "c"))
    assert {found["overlapping"][0]["a"], found["overlapping"][0]["b"]} == {"b", "c"}
    quality = {c["class"]: c["label_quality"] for c in found["classes"]}
    assert quality["b"] < quality["a"] and quality["b"] < quality["c"]
    assert found["label_health_score"] < 1


@pytest.mark.parametrize("body, what", [
    ("split_a,index_a\n", "expected the columns"),
    ("split_a,index_a,split_b,index_b,distance,same_label\ntrain,x,test,0,0.1,1\n", "malformed row"),
    ("split_a,index_a,split_b,index_b,distance,same_label\ntrain,0,test,99999,0.1,1\n", "not one of"),
    ("split_a,index_a,split_b,index_b,distance,same_label\nvalid,0,test,0,0.1,1\n", "not one of"),
])
def test_bad_duplicates_file_is_refused_in_one_line(tmp_path, body, what):
    (tmp_path / "duplicates.csv").write_text(body)
    manifest.record(tmp_path, tmp_path / "duplicates.csv")
    with pytest.raises(ConfigError, match=what) as e:
        healthview.read_duplicates(tmp_path, {"train": 10, "test": 5})
    assert "\n" not in str(e.value)


def test_bad_health_json_is_refused_in_one_line(report_run, mnist, tmp_path):
    import shutil

    from ambiguous_digits import report

    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    (run / "health.json").write_text(json.dumps({"duplicates": {}}))
    manifest.record(run, run / "health.json")
    with pytest.raises(ConfigError, match="health.json") as e:
        report.write_report(run, dataset=mnist)
    assert "\n" not in str(e.value)


def test_report_shows_how_the_recipe_was_chosen(report_run):
    config = json.loads((report_run / "config.json").read_text())
    assert config["recipe"]["starts_from"] == "mnist" and config["recipe_choice"]["by"].startswith("measured for mnist")
    html = (report_run / "report.html").read_text()
    assert 'id="recipe-choice"' in html and "measured for mnist" in html


def test_the_map_hovers_and_clicks_in_a_browser(browser, report_run):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((report_run / "report.html").as_uri())
    page.wait_for_selector("#health-map[data-ready='1']", timeout=20000)
    n = page.evaluate("window.healthMap.n")
    assert n == 900  # 600 training + 300 test digits, each a point
    # a test digit of the galleries, so its detail view can open from the map
    test_point = page.evaluate("window.healthMap.find(function (l, m, i) { return (m & 1) && "
                               "window.ambiguousDigits.DIGITS.has(i - 600); })")
    x, y = page.evaluate(f"window.healthMap.point({test_point})")
    canvas = page.locator("#health-map")
    canvas.hover(position={"x": x, "y": y})
    tip = page.locator("#health-map-tip")
    said = tip.locator("span").text_content()
    assert tip.is_visible() and said.startswith("test #")
    marks = page.evaluate(f"window.healthMap.marks({test_point})")
    assert ("suspected label error" in said) == bool(marks & healthview.MARKS["suspect"])
    rings = page.evaluate("window.healthMap.find(function (l, m) { return m & 2; })")
    assert rings >= 0  # the audits' top 100 are marked
    canvas.click(position={"x": x, "y": y})
    chosen = page.locator("#health-map-selected")
    assert chosen.get_attribute("data-split") == "test"
    hovered = page.evaluate("window.healthMap.state.hovered")
    assert int(chosen.get_attribute("data-index")) == hovered - 600
    page.locator("#health-map-open").click()
    assert page.locator("#detail").is_visible()
    page.keyboard.press("Escape")
    page.mouse.move(0, 0)
    assert not tip.is_visible()
    assert errors == []
    page.close()


def test_recipe_starts_from_the_data_sets_measured_one():
    fashion, choose = start_recipe({"dataset": "fashion-mnist"})
    assert (fashion.augment, fashion.epochs, fashion.widths, fashion.starts_from) == (False, 10, (24, 48, 128),
                                                                                      "fashion-mnist")
    assert not choose
    typed, _ = start_recipe({"dataset": "fashion-mnist", "epochs": 3, "augment": True})
    assert typed.epochs == 3 and typed.augment and typed.widths == (24, 48, 128)
    assert start_recipe({})[0] == Recipe(starts_from="mnist")
    assert start_recipe({"dataset": "npz:/x.npz"})[1]
    assert not start_recipe({"dataset": "npz:/x.npz", "widths": (8, 8, 8)})[1]


@pytest.mark.parametrize("fashion_right, chosen", [(400, "fashion-mnist"), (303, "mnist"), (250, "mnist")])
def test_users_recipe_moves_only_on_a_clear_validation_win(mnist, monkeypatch, fashion_right, chosen):
    """MNIST's recipe gets the first 300 of 400 held-out images right; Fashion-MNIST's the first `fashion_right`."""
    import torch

    from ambiguous_digits.train import Precision, Runtime

    right = {"mnist": 300, "fashion-mnist": fashion_right}
    monkeypatch.setattr(recipes, "train", lambda x, y, recipe, *a, **k: (recipe.starts_from, []))

    def predict(model, images, device):  # right on the first right[model] images, wrong after
        labels = held[: len(images)]
        probs = np.eye(10)[(labels + (np.arange(len(images)) >= right[model])) % 10]
        return probs

    recipe, _ = start_recipe({"dataset": "npz:/x.npz"})
    order = np.random.default_rng(recipes.VALIDATION_SEED).permutation(2000)
    y = mnist.y_train[:2000]
    held = y[np.sort(order[:400])]
    monkeypatch.setattr(recipes, "predict_probs", predict)
    got, record = recipes.choose(recipe, mnist.x_train[:2000], y, 10, Runtime(torch.device("cpu"), Precision(False)),
                                 lambda _: None)
    assert record["chosen"] == got.starts_from == chosen
    assert record["validation_accuracy"] == {"mnist": 0.75, "fashion-mnist": fashion_right / 400}
    assert got.augment == RECIPES[chosen].get("augment", True)
    assert got.members == RECIPES[chosen].get("members", Recipe.members)  # Fashion-MNIST's six, MNIST's four


def test_a_recipe_must_beat_mnists_by_more_than_chance():
    a = np.zeros(1000, bool)
    b = a.copy()
    a[:30] = True  # 30 wins, no losses: well over 2 sigma
    assert recipes.better(a, b) and not recipes.better(b, a)
    b[30:50] = True  # 30 wins, 20 losses: 10 < 2 * sqrt(50)
    assert not recipes.better(a, b)
