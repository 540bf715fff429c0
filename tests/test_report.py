"""The HTML report of a tiny real run: checked as a file, and driven in a real headless Chromium.

The browser tests need Debian's `chromium` (apt-get install chromium) and the
`playwright` package (requirements.txt); without them they FAIL, never skip.
Playwright never downloads a browser here: it drives /usr/bin/chromium.
"""

import csv
import dataclasses
import json
import re
import shutil
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ambiguous_digits import __version__, cli, gallery, manifest, report, rundir, scores
from ambiguous_digits.config import ConfigError

MEMBERS = 2  # conftest.REPORT_RUN
VIEWPORT = {"width": 1280, "height": 900}
INDICES_JS = "els => els.map(e => Number(e.dataset.index))"


# ---------------------------------------------------------------------------
# Fixtures: the tiny run (conftest.report_run) and its report; conftest.audited_run has the audit's files beside it
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report_path(report_run, mnist):
    return report.write_report(report_run, dataset=mnist)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _expected(rows, column, count, label=None, pred=None, pred_rows=None):
    """Test indices the gallery should show: ranked by `column` (1 first), filtered, first `count`."""
    pred_rows = pred_rows or rows
    ranked = sorted((r for r in rows if r[column]), key=lambda r: float(r[column]))
    keep = [int(r["index"]) for r in ranked
            if (label is None or int(r.get("label", r.get("given_label"))) == label)
            and (pred is None or int(pred_rows[int(r["index"])]["pred"]) == pred)]
    return keep[:count]


def _section(html, section_id):
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S)
    assert match, f"no section #{section_id}"
    return re.sub(r"<[^>]+>", " ", match.group(1))


def _page_data(html):
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


# ---------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------
def test_report_is_written_into_the_run_directory(report_run, report_path):
    assert report_path == report_run / "report.html"
    assert report_path.read_text().startswith("<!doctype html>")
    assert not list(report_run.glob(".*.tmp")), "temporary files left behind"


class _References(HTMLParser):
    """Every src/href/srcset/action/data value, and every <link> tag."""

    def __init__(self):
        super().__init__()
        self.urls, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [v for k, v in attrs.items() if k in ("src", "href", "srcset", "action", "data") and v]
        if tag == "link":
            self.links.append(attrs)


def test_report_is_self_contained(report_path):
    html = report_path.read_text()
    refs = _References()
    refs.feed(html)
    assert refs.urls, "no references found at all: the parser missed them"
    for url in refs.urls:
        assert url.startswith(("data:", "#")), f"external reference {url[:80]!r}"
    assert all(link.get("rel") != "stylesheet" for link in refs.links)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import", html)
    assert "<style>" in html and "<script>" in html


def test_report_embeds_the_gallery_data_as_valid_json(report_path, report_run):
    html = report_path.read_text()
    data = _page_data(html)
    assert not re.search(r"\bNaN\b|Infinity", html), "JSON has no NaN; the browser's JSON.parse would fail"
    shown = {d["i"] for d in data["digits"]}
    rows = _rows(report_run / "scores.csv")
    assert shown >= {int(r["index"]) for r in rows if r["label"] != r["pred"]}, "every error is embedded"
    assert set(data["rankings"]) == set(scores.RANKINGS) | {"label_issues"}  # the run's own test audit
    for ranking in data["rankings"].values():
        assert set(ranking["order"]) <= shown
    assert all(d["img"].startswith("data:image/png;base64,") and len(d["votes"]) == MEMBERS for d in data["digits"])


def test_the_page_shows_the_answers_in_the_runs_noun(report_path, report_run):
    facts = report.run_facts(report.load_run(report_run))
    text = unescape(_section(report_path.read_text(), "answers"))
    for answer in report.answers(facts):
        assert answer["question"] in text
        assert all(paragraph in text for paragraph in answer["paragraphs"])
    assert "test digits" in text and "image" not in text.replace("Impact of the images", "")


@pytest.mark.parametrize("dataset, noun", [("mnist", "digit"), ("fashion-mnist", "image"), ("npz:/d/x.npz", "image")])
def test_the_noun_is_digit_for_mnist_and_image_for_any_other_data_set(dataset, noun):
    assert report.noun(dataset) == noun


def test_header_holds_accuracy_ensemble_and_time_and_the_page_the_checksums(report_path, report_run):
    summary = json.loads((report_run / "summary.json").read_text())
    html = report_path.read_text()
    header = re.search(r'<header class="masthead">(.*?)</header>', html, re.S).group(1)
    assert f"{summary['test_accuracy']:.2%}" in header
    assert f"{summary['member_accuracy_mean']:.2%} ± {summary['member_accuracy_std']:.2%}" in header
    assert f"{summary['seconds']['total']:.1f} s" in header
    for md5 in summary["data"]["md5"].values():  # under Run details
        assert md5 in html
    assert f"{summary['seconds']['total']:.2f} s" in html  # the timings table


def test_without_audit_files_there_is_no_label_issue_section(report_run, tmp_path, mnist):
    """A run without the audits (--no-cross-fit, or before 0.8): the tiny run with them unlisted."""
    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    manifest.forget(run, *(f for split in ("test", "train") for f in rundir.AUDIT[split].outputs))
    html = report.write_report(run, dataset=mnist).read_text()
    assert 'value="label_issues"' not in html
    assert 'id="label-audit"' not in html
    text = unescape(_section(html, "answers"))
    assert "'ambiguous-digits audit'" in text and "'validate'" in text  # the commands that would measure it


def test_with_label_issues_the_gallery_and_validation_appear(audited_run):
    html = (audited_run / "report.html").read_text()
    assert '<option value="label_issues">' in html
    assert 'id="label-audit"' in html
    v = json.loads((audited_run / "validation.json").read_text())["rankings"]["label_issues"]
    assert f"{v['average_precision']:.3f}" in _section(html, "answers")
    assert len(re.findall(r"data-train-index=", html)) == gallery.TRAIN_ISSUES_SHOWN
    data = _page_data(html)
    assert data["rankings"]["label_issues"]["order"][:5] == _expected(_rows(audited_run / "label_issues.csv"),
                                                                       "rank", 5)


def test_re_rendering_loads_the_pixels_itself_and_is_deterministic(report_run, report_path):
    first = report_path.read_bytes()
    assert report.write_report(report_run).read_bytes() == first  # data dir taken from summary.json


def test_a_directory_that_is_not_a_run_is_refused(tmp_path, mnist):
    with pytest.raises(ConfigError, match="no manifest.json"):
        report.write_report(tmp_path, dataset=mnist)
    manifest.record(tmp_path)
    with pytest.raises(ConfigError, match="summary.json"):
        report.write_report(tmp_path, dataset=mnist)


def test_pixels_from_another_mnist_are_refused(report_run, mnist):
    wrong = dataclasses.replace(mnist, checksums={**mnist.checksums, "t10k-images-idx3-ubyte": "0" * 32})
    with pytest.raises(ConfigError, match="md5"):
        report.write_report(report_run, dataset=wrong)


@pytest.mark.parametrize("key, message", [("member_accuracy", "member_accuracy"),
                                          ("run_id", "no run_id; re-run")])  # run_id: the review's storage key
def test_a_summary_from_an_older_run_is_refused(report_run, tmp_path, mnist, key, message):
    old = tmp_path / "old"
    shutil.copytree(report_run, old)
    summary = json.loads((old / "summary.json").read_text())
    del summary[key]
    (old / "summary.json").write_text(json.dumps(summary))
    manifest.record(old, old / "summary.json")  # an honest older summary, not a tampered one
    with pytest.raises(ConfigError, match=message):
        report.write_report(old, dataset=mnist)


def test_a_manifest_from_another_version_is_refused(report_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(report_run, other)
    body = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**body, "version": 99}))
    assert cli.main(["report", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    # its writer is this version, which writes one format only: edited (it used to say "written by X ...; this is X")
    assert f"{other / 'manifest.json'}: manifest format 99, but ambiguous-digits {__version__}, named as its " in err
    assert f"writes format {manifest.MANIFEST_VERSION} (edited?)" in err and "--force" in err
    assert len(err.splitlines()) == 1


def test_a_report_that_cannot_be_written_is_one_line_and_changes_nothing(report_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    (run / "report.html").unlink(missing_ok=True)
    (run / "report.html").mkdir()  # in the way, as a read-only folder or a full disk would be
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert cli.main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ambiguous-digits: error: {run / 'report.html'}: cannot write it (Is a directory)"
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_an_unlisted_audit_file_is_not_used_and_a_listed_missing_one_is_refused(audited_run, tmp_path, mnist):
    """A command killed between writing a file and listing it leaves the file unlisted: not complete, not read."""
    run = tmp_path / "run"
    shutil.copytree(audited_run, run)
    manifest.forget(run, "label_issues.csv")
    assert report.load_run(run).label_issues is None
    manifest.record(run, run / "label_issues.csv")
    (run / "label_issues.csv").unlink()
    with pytest.raises(ConfigError, match="label_issues.csv: listed in manifest.json but missing"):
        report.load_run(run)


# ---------------------------------------------------------------------------
# In a real browser
# ---------------------------------------------------------------------------


class Opened:
    """A page showing a report, with every console error and uncaught exception it raised."""

    def __init__(self, browser, path: Path):
        self.page = browser.new_page(viewport=VIEWPORT)
        self.errors = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(path.as_uri())

    def shown(self) -> list[int]:
        return self.page.eval_on_selector_all("#gallery .digit", INDICES_JS)

    def choose(self, **selects) -> list[int]:
        for select_id, value in selects.items():
            self.page.select_option(f"#{select_id.replace('_', '-')}", str(value))
        return self.shown()


@pytest.fixture
def page(browser, report_path):
    opened = Opened(browser, report_path)
    yield opened
    opened.page.close()
    assert opened.errors == [], f"console errors: {opened.errors}"


def test_gallery_shows_the_top_digits_of_the_default_ranking(page, report_run):
    rows = _rows(report_run / "scores.csv")
    assert page.page.input_value("#ranking") == "confident_wrong"
    assert page.shown() == _expected(rows, "rank_confident_wrong", gallery.DEFAULT_COUNT)
    loaded = page.page.eval_on_selector_all("#gallery .digit img", "els => els.map(e => e.naturalWidth)")
    assert loaded == [28] * gallery.DEFAULT_COUNT, "every digit image decodes to its 28 pixels"
    box = page.page.locator("#gallery .digit img").first.bounding_box()
    assert box["width"] >= 100, "digits are shown large"
    style = page.page.eval_on_selector("#gallery .digit img", "e => getComputedStyle(e).imageRendering")
    assert style == "pixelated"


@pytest.mark.parametrize("count", gallery.COUNTS)
def test_count_selects_how_many_are_shown(page, report_run, count):
    rows = _rows(report_run / "scores.csv")
    assert page.choose(ranking="least_confident", count=count) == _expected(rows, "rank_least_confident", count)


@pytest.mark.parametrize("ranking", list(scores.RANKINGS))
def test_every_ranking_shows_its_own_order(page, report_run, ranking):
    rows = _rows(report_run / "scores.csv")
    assert page.choose(ranking=ranking, count=50) == _expected(rows, f"rank_{ranking}", 50)
    ranks = page.page.eval_on_selector_all("#gallery .digit", "els => els.map(e => Number(e.dataset.rank))")
    assert ranks == list(range(1, len(ranks) + 1))


def test_switching_ranking_changes_the_order(page):
    first = page.choose(ranking="confident_wrong", count=25)
    assert page.choose(ranking="entropy") != first
    assert page.choose(ranking="confident_wrong") == first


def test_true_digit_filter_shows_exactly_that_digit(page, report_run):
    rows = _rows(report_run / "scores.csv")
    digit = int(np.bincount([int(r["label"]) for r in rows]).argmax())
    shown = page.choose(ranking="least_confident", count=25, filter_true=digit)
    labels = page.page.eval_on_selector_all("#gallery .digit", "els => els.map(e => Number(e.dataset.label))")
    assert labels == [digit] * len(shown)
    assert shown == _expected(rows, "rank_least_confident", 25, label=digit)
    assert len(shown) == min(25, sum(int(r["label"]) == digit for r in rows))


def test_predicted_and_true_filters_combine(page, report_run):
    rows = _rows(report_run / "scores.csv")
    wrong = [r for r in rows if r["label"] != r["pred"]]
    t, p = int(wrong[0]["label"]), int(wrong[0]["pred"])
    shown = page.choose(ranking="margin", count=100, filter_true=t, filter_pred=p)
    assert shown == _expected(rows, "rank_margin", 100, label=t, pred=p)
    preds = page.page.eval_on_selector_all("#gallery .digit", "els => els.map(e => Number(e.dataset.pred))")
    assert preds == [p] * len(shown) and shown
    assert page.page.text_content("#gallery-status").startswith(f"Showing {len(shown)} of ")


def test_clicking_a_digit_opens_its_detail_with_every_members_vote(page, report_run):
    with np.load(report_run / "probs.npz") as f:
        votes = f["probs"].argmax(axis=2)  # (M, N)
    assert page.page.locator("#detail").is_hidden()
    item = page.page.locator("#gallery .digit").nth(2)
    index = int(item.get_attribute("data-index"))
    item.click()
    detail = page.page.locator("#detail")
    assert detail.is_visible()
    assert int(detail.get_attribute("data-index")) == index
    assert f"#{index}" in page.page.text_content("#detail-title")
    rows = page.page.locator("#detail .vote")
    assert rows.count() == MEMBERS
    shown_votes = [int(rows.nth(m).locator("td").first.text_content()) for m in range(MEMBERS)]
    assert shown_votes == votes[:, index].tolist()
    assert page.page.locator("#detail-probs .track").count() == 10
    page.page.keyboard.press("Escape")
    assert detail.is_hidden()


def test_clicking_a_confusion_cell_shows_those_errors(page):
    cell = page.page.locator("#confusion td.hit").first
    t, p = int(cell.get_attribute("data-true")), int(cell.get_attribute("data-pred"))
    cell.click()
    pairs = page.page.eval_on_selector_all("#gallery .digit",
                                           "els => els.map(e => [+e.dataset.label, +e.dataset.pred])")
    assert pairs and all(pair == [t, p] for pair in pairs)
    assert len(pairs) == min(int(cell.text_content()), gallery.DEFAULT_COUNT)


def test_label_issue_gallery_in_the_browser(browser, audited_run):
    opened = Opened(browser, audited_run / "report.html")
    shown = opened.choose(ranking="label_issues", count=25)
    assert shown == _expected(_rows(audited_run / "label_issues.csv"), "rank", 25)
    opened.page.locator("#gallery .digit").first.click()
    assert "suggested label" in opened.page.text_content("#detail-measures")
    opened.page.close()
    assert opened.errors == []


def test_screenshot(page, tmp_path):
    shot = tmp_path / "report.png"
    page.page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as im:
        assert im.width == VIEWPORT["width"] and im.height > VIEWPORT["height"]
        assert len(np.unique(np.asarray(im.convert("L").resize((64, 64))))) > 10, "not a blank page"


def test_a_report_that_cannot_be_refreshed_says_it_still_shows_the_earlier_results(report_run, monkeypatch):
    """`audit`, `validate` and `experiment` keep their results when the page cannot be re-written (a full disk, say),
    and say the page is stale and how to re-write it."""
    from ambiguous_digits import files
    from ambiguous_digits.commands import common

    def full(*args, **kwargs):
        raise files.WriteError("report.html: cannot write it (No space left on device)")

    monkeypatch.setattr(common.report, "write_report", full)
    said = []
    common.refresh_report(report_run, log=said.append)
    assert said == ["report.html not refreshed, so it still shows the earlier results (report.html: cannot write it "
                    f"(No space left on device)); once that is mended, `ambiguous-digits report {report_run}` "
                    "re-writes it"]
