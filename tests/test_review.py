"""The report's evidence and review mode on the tiny run: the page's data checked as a file, the review driven by
the keyboard in Debian's headless Chromium (Playwright; never a downloaded browser), export and import included.

Like test_report.py's browser tests these FAIL, never skip, without /usr/bin/chromium or playwright.
"""

import csv
import json
import re
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from ambiguous_digits import cli, evidence, gallery, manifest, report

VIEWPORT = {"width": 1280, "height": 900}
COLUMNS = ["split", "index", "given_label", "verdict", "new_label", "note", "reviewed_at"]
QUEUE_JS = "els => els.map(e => [Number(e.dataset.index), e.dataset.verdict])"
# The page's own timing: when the parser made the document interactive, and when the review's script was ready.
TIMING_JS = """() => ({interactive: performance.getEntriesByType('navigation')[0].domInteractive,
                       review_ready: performance.getEntriesByName('review-ready')[0].startTime})"""


# ---------------------------------------------------------------------------
# Fixtures: the tiny run's report (conftest.report_run) and its audited copy (conftest.audited_run)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report_path(report_run, mnist):
    return report.write_report(report_run, dataset=mnist)


def _page_data(path: Path) -> dict:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', path.read_text(), re.S)
    return json.loads(match.group(1))


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _neighbours(run_dir: Path) -> dict[tuple[int, str], list[int]]:
    """(test digit, role) -> its training neighbours, nearest first, as neighbours.csv lists them."""
    found: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for r in _csv(run_dir / "neighbours.csv"):
        if r["split"] != "test":  # the training audit's digits: no cards in the page's galleries
            continue
        found.setdefault((int(r["index"]), r["role"]), []).append((int(r["rank"]), int(r["train_index"])))
    return {key: [t for _, t in sorted(v)] for key, v in found.items()}


# ---------------------------------------------------------------------------
# The page's data
# ---------------------------------------------------------------------------
def test_the_page_carries_the_run_id_and_every_digits_reasons(report_path, report_run):
    data = _page_data(report_path)
    assert data["run_id"] == json.loads((report_run / "summary.json").read_text())["run_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", data["run_id"])
    reasons = {int(r["index"]): r["reasons"] for r in _csv(report_run / "scores.csv")}
    assert all(d["reasons"] == reasons[d["i"]] and d["reasons"] for d in data["digits"])


def test_exactly_the_digits_in_neighbours_csv_get_strips_of_their_neighbours(report_path, report_run, mnist):
    data, listed = _page_data(report_path), _neighbours(report_run)
    with_strips = {d["i"]: d for d in data["digits"] if "strips" in d}
    assert set(with_strips) == {i for i, _ in listed} and with_strips
    for i, d in with_strips.items():
        assert "given" in d["strips"][0]["roles"] and d["strips"][0]["c"] == d["y"]
        for s in d["strips"]:
            assert all(s["train"] == listed[i, role] for role in s["roles"])
            assert len(s["train"]) == evidence.EVIDENCE_K and (mnist.y_train[s["train"]] == s["c"]).all()
        # a strip per distinct class; a caption only where another class is there to compare with
        assert d["caption"].startswith(f"this {d['y']} sits ") if len(d["strips"]) > 1 else d["caption"] == ""
    assert any(len(d["strips"]) > 1 for d in with_strips.values())
    shown = {t for d in with_strips.values() for s in d["strips"] for t in s["train"]}
    assert set(map(int, data["train_images"])) == shown, "each training image shown is held once, no others"
    t = min(shown)
    assert data["train_images"][str(t)] == gallery.digit_uri(mnist.x_train[t])


def test_without_neighbours_csv_there_are_no_strips(report_run, mnist, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    manifest.forget(run, "neighbours.csv")  # as a run that never wrote it
    data = _page_data(report.write_report(run, dataset=mnist))
    assert data["train_images"] == {} and not any("strips" in d for d in data["digits"])
    assert all(d["reasons"] for d in data["digits"]), "the reasons come from scores.csv, not neighbours.csv"


# ---------------------------------------------------------------------------
# In a real browser
# ---------------------------------------------------------------------------


class Review:
    """A report open in its own browser context (its own localStorage), with the errors the page raised."""

    def __init__(self, browser, path: Path):
        self.context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        self.page = self.context.new_page()
        self.errors = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(path.as_uri())

    def keys(self, *names: str) -> None:
        for name in names:
            self.page.keyboard.press(name)

    def queue(self) -> list[list]:
        return self.page.eval_on_selector_all("#review-queue li", QUEUE_JS)

    def here(self) -> int:
        return int(self.page.get_attribute("#review", "data-index"))

    def progress(self) -> str:
        return self.page.text_content("#review-progress")

    def export(self, path: Path) -> list[dict]:
        with self.page.expect_download() as download:
            self.keys("e")
        assert download.value.suggested_filename == "review.csv"
        download.value.save_as(path)
        with open(path, newline="") as f:
            assert next(csv.reader(f)) == COLUMNS
        return _csv(path)

    def close(self) -> None:
        self.context.close()
        assert self.errors == [], f"console errors: {self.errors}"


@pytest.fixture
def opened(browser, report_path):
    r = Review(browser, report_path)
    yield r
    r.close()


def _other(label: int) -> int:
    return (label + 3) % 10


def test_the_detail_view_shows_the_reasons_and_the_neighbour_strips(opened, report_path):
    data = _page_data(report_path)
    d = next(d for d in data["digits"] if "strips" in d)
    opened.page.select_option("#count", "100")
    opened.page.select_option("#ranking", next(n for n, r in data["rankings"].items() if d["i"] in r["order"][:100]))
    opened.page.locator(f'#gallery .digit[data-index="{d["i"]}"]').click()
    box = opened.page.locator("#detail-evidence")
    assert d["reasons"] in box.text_content() and d["caption"] in box.text_content()
    assert box.locator(".strip").count() == len(d["strips"])
    loaded = box.locator(".strip img").evaluate_all("els => els.map(e => e.naturalWidth)")
    assert loaded == [28] * sum(len(s["train"]) for s in d["strips"])


def test_review_by_keyboard_survives_a_reload_and_exports_review_csv(opened, report_path, tmp_path):
    data = _page_data(report_path)
    order = data["rankings"]["label_issues"]["order"][:100]  # the run's own audit: label issues are the default queue
    digits = {d["i"]: d for d in data["digits"]}
    page = opened.page
    timing = page.evaluate(TIMING_JS)
    print(f"\nreport.html ({report_path.stat().st_size:,} bytes): interactive after {timing['interactive']:.0f} ms, "
          f"review ready after {timing['review_ready']:.0f} ms")
    assert page.locator("#review").is_hidden()
    opened.keys("r")
    assert page.locator("#review").is_visible()
    assert page.input_value("#review-ranking") == "label_issues"
    assert opened.progress() == f"0 of {len(order)} reviewed" and opened.here() == order[0]
    relabel = _other(digits[order[0]]["y"])
    opened.keys(str(relabel), "c", "x", "c")  # relabel #0, confirm #1, exclude #2, confirm #3 ...
    assert opened.here() == order[4] and opened.progress() == f"4 of {len(order)} reviewed"
    opened.keys("u")  # ... and undo the last
    assert opened.here() == order[3] and opened.progress() == f"3 of {len(order)} reviewed"
    opened.keys("ArrowRight", "ArrowDown", "ArrowLeft")
    assert opened.here() == order[4]
    opened.keys("ArrowUp", "ArrowLeft", "ArrowLeft")
    assert opened.here() == order[1] and page.get_attribute("#review", "data-verdict") == "correct"
    expected = [[order[0], "relabel"], [order[1], "correct"], [order[2], "exclude"], [order[3], ""]]

    page.reload()
    assert page.locator("#review").is_visible(), "the review reopens where it was"
    assert opened.queue()[:4] == expected and opened.here() == order[1]
    assert opened.progress() == f"3 of {len(order)} reviewed"
    rows = opened.export(tmp_path / "review.csv")
    assert [(int(r["index"]), r["verdict"]) for r in rows] == sorted(tuple(e) for e in expected[:3])
    by_index = {int(r["index"]): r for r in rows}
    assert all(r["split"] == "test" and int(r["given_label"]) == digits[i]["y"] for i, r in by_index.items())
    assert by_index[order[0]]["new_label"] == str(relabel)
    assert by_index[order[1]]["new_label"] == by_index[order[2]]["new_label"] == ""
    assert all(datetime.fromisoformat(r["reviewed_at"]).tzinfo is not None for r in rows)


def test_the_queue_puts_suspected_label_errors_first(browser, audited_run):
    r = Review(browser, audited_run / "report.html")
    r.keys("r")
    assert r.page.input_value("#review-ranking") == "label_issues"
    order = _page_data(audited_run / "report.html")["rankings"]["label_issues"]["order"][:100]
    assert [i for i, _ in r.queue()] == order
    r.page.select_option("#review-ranking", "entropy")
    r.page.select_option("#review-count", "25")
    r.keys("x")  # the keys act on the review again after a select
    entropy = _page_data(audited_run / "report.html")["rankings"]["entropy"]["order"][:25]
    assert r.queue()[:2] == [[entropy[0], "exclude"], [entropy[1], ""]]
    assert r.progress() == "1 of 25 reviewed"
    r.close()


def _review_file(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows([("test", i, y, verdict, new, "", "2026-01-02T03:04:05.000Z") for i, y, verdict, new in rows])
    return path


def test_importing_another_reviewers_file_lists_the_disagreement_and_overwrites_nothing(opened, report_path,
                                                                                       tmp_path):
    data = _page_data(report_path)
    order = data["rankings"]["label_issues"]["order"]  # the default queue
    y = {d["i"]: d["y"] for d in data["digits"]}
    opened.keys("r", str(_other(y[order[0]])), "c")
    theirs = _review_file(tmp_path / "theirs.csv", [
        (order[0], y[order[0]], "relabel", _other(y[order[0]])),  # agrees
        (order[1], y[order[1]], "exclude", ""),  # disagrees
        (order[2], y[order[2]], "correct", ""),  # new
        (order[3], _other(y[order[3]]), "correct", ""),  # another run's label: skipped
    ])
    opened.page.set_input_files("#review-import", str(theirs))
    conflicts = opened.page.locator("#review-conflict-rows tr")
    conflicts.first.wait_for()
    assert conflicts.count() == 1 and int(conflicts.first.get_attribute("data-index")) == order[1]
    status = opened.page.text_content("#review-status")
    assert "1 new verdicts, 1 the same as yours, 1 different" in status and "lines 5 skipped" in status
    assert opened.queue()[:4] == [[order[0], "relabel"], [order[1], "correct"], [order[2], "correct"], [order[3], ""]]
    conflicts.first.locator('button[data-side="theirs"]').click()
    assert opened.page.locator("#review-conflicts").is_hidden()
    assert opened.queue()[1] == [order[1], "exclude"]


def test_an_exported_review_continues_in_another_browser(browser, report_path, tmp_path):
    first = Review(browser, report_path)
    first.keys("r", "c", "x")
    exported = first.export(tmp_path / "review.csv")
    first.close()
    second = Review(browser, report_path)
    second.keys("r")
    assert second.progress().startswith("0 of ")
    second.page.set_input_files("#review-import", str(tmp_path / "review.csv"))
    second.page.wait_for_function("document.getElementById('review-progress').textContent.startsWith('2 of')")
    assert second.export(tmp_path / "again.csv") == exported
    second.close()


def test_clean_consumes_the_exported_review(browser, report_run, report_path, tmp_path):
    data = _page_data(report_path)
    order, y = data["rankings"]["label_issues"]["order"], {d["i"]: d["y"] for d in data["digits"]}
    r = Review(browser, report_path)
    r.keys("r", str(_other(y[order[0]])), "c", "x")
    exported = tmp_path / "review.csv"
    assert len(r.export(exported)) == 3
    r.close()
    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    assert cli.main(["clean", str(run), "--review", str(exported)]) == 0
