"""`validate`: check -> load the rankings and the human review -> compare -> write validation.json."""

from __future__ import annotations

from pathlib import Path

from .. import manifest, outputs, rundir, validate
from ..config import ConfigError
from .common import refresh_report

# Each ranking a run directory may hold: (its file, the column that ranks, 1 = first).
SOURCES = {"label_issues": (rundir.AUDIT["test"].table, "rank"), "ambiguity": (rundir.SCORES_FILE, "rank_ambiguity")}


def run_validate(run_dir: Path) -> dict:
    """validation.json: each available ranking (audit's label issues, the run's ambiguity) vs the review."""
    manifest.require(run_dir)
    with rundir.locked(run_dir, flag="RUN_DIR"):
        available = {k: (manifest.verified(run_dir, name), column) for k, (name, column) in SOURCES.items()
                     if manifest.listed(run_dir, name)}  # written (and listed); unlisted ones are not complete
        if not available:
            raise ConfigError(f"RUN_DIR: {run_dir} has neither label_issues.csv (from a cross-fitted `run`, or `audit`) nor scores.csv "
                              f"(run `run`)")
        dataset = rundir.run_dataset(run_dir)
        if dataset not in validate.REVIEWS:
            raise ConfigError(f"RUN_DIR: {run_dir} is a run on {dataset}, and no human review of {dataset}'s labels "
                              f"exists to validate against (only MNIST's test set has one)")
        review = validate.load_review(dataset)
        result = {}
        for name, (path, column) in available.items():
            table = outputs.read_table(path)  # raises ConfigError naming the file
            if column not in table:
                raise ConfigError(f"{path}: no column {column!r}")
            try:
                result[name] = validate.validate_ranking(table[column], review)
            except ValueError as e:
                raise ConfigError(f"{path}: {e}") from None
        out = {"rankings": result, "review": validate.REVIEWS[dataset]}
        rundir.save_json(run_dir, rundir.VALIDATION_FILE, out)
        refresh_report(run_dir)
    return out
