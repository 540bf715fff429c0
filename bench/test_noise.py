"""Test-label noise benchmark: does the run's test audit find test labels we flipped ourselves?

The members never see a test label, so flipping the test labels after a run is the same as running on them:
no training here. For each finished run (`ambiguous-digits run`, all 10,000 test digits) it flips a seeded
fraction of the test labels under label_noise.py's three noise models (uniform, confusable pairs, instance:
to the class the run's own ensemble finds second most likely), several draws per run, and scores every
ranking (RANKINGS, HIGHER = more suspect) by average precision and recall at k (k = the flips), and
cleanlab's flags (`is_label_issue`) by precision and recall. MNIST's test set has label errors of its own
(the published review found 15 among 100 digits): they count as false positives here. So each ranking's AP is
also given over the digits the ensemble reads as their clean label (`ap_read`): there no real error competes,
and what is left is how well the planted flips alone are found.
Also reports each ranking on the clean labels against the human review, as a check (never tuned on).

    python bench/test_noise.py RUN [RUN ...] [--rates 0.01,0.001] [--draws 3] [--out test_noise.json]

Mean +- std (n - 1) over the runs (give runs of different seeds); each run's number is the mean of its draws.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from cleanlab.rank import get_label_quality_ensemble_scores, get_label_quality_scores

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is a script folder, not the package

from ambiguous_digits import audit, manifest, rundir, scores, validate  # noqa: E402
from bench.label_noise import MODELS, NOISE_STREAM, flip_labels, score  # noqa: E402


def rankings(member_probs: np.ndarray, labels: np.ndarray, table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every ranking of the test labels (HIGHER = more suspect) from the members' (M, N, K) probabilities: the
    run's own test audit (`table`: audit.label_issue_table on the members' mean, as the run makes it),
    self-confidence on the mean, cleanlab's ensemble score over the members, and the share of members that read
    another class."""
    mean = ensemble_mean(member_probs)
    votes = member_probs.argmax(axis=2)
    return {"run_audit": 1 - table["label_quality"],
            "self_confidence": 1 - get_label_quality_scores(labels, mean, method="self_confidence"),
            "ensemble_margin": 1 - get_label_quality_ensemble_scores(
                labels, [p.astype(np.float64) for p in member_probs], method="normalized_margin", verbose=False),
            "members_disagree": (votes != labels).mean(axis=0) + 1e-3 * (1 - mean[np.arange(len(labels)), labels])}


def ensemble_mean(member_probs: np.ndarray) -> np.ndarray:
    """(N, K) the members' mean in float64, rows summing to 1 as cleanlab checks."""
    mean = member_probs.mean(axis=0).astype(np.float64)
    return mean / mean.sum(axis=1, keepdims=True)


def flag_score(flagged: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    """Precision and recall of (N,) bool flags at finding `flipped` (indices); precision 0 when nothing is flagged."""
    hits = int(flagged[flipped].sum())
    return {"precision": hits / max(int(flagged.sum()), 1), "recall": hits / len(flipped),
            "flagged": int(flagged.sum())}


def load(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The finished run's (M, N, K) member probabilities over the test digits and their (N,) labels."""
    with np.load(manifest.verified(run_dir, rundir.PROBS_FILE)) as z:
        return z["probs"], z["labels"].astype(np.int64)


def read_score(suspicion: np.ndarray, flipped: np.ndarray, read: np.ndarray) -> dict[str, float]:
    """label_noise.score, plus `ap_read`: the average precision over the digits in `read` (N,) bool only; NaN
    where no flipped digit is read as labelled (no AP to take, not an AP of 0)."""
    truth = np.zeros(len(suspicion), dtype=bool)
    truth[flipped] = True
    ap_read = score(suspicion[read], np.flatnonzero(truth[read]))["ap"] if truth[read].any() else math.nan
    return {**score(suspicion, flipped), "ap_read": ap_read}


def one_run(member_probs: np.ndarray, labels: np.ndarray, seed: int, rates: list[float], draws: int,
            models: list[str], review: list[dict]) -> list[dict]:
    """Rows (model, rate, draw, scores, flags) for one run, plus one row of the clean labels' review check."""
    mean = ensemble_mean(member_probs)
    second = np.argsort(-mean, axis=1, kind="stable")[:, 1]
    read = mean.argmax(axis=1) == labels  # the digits the ensemble reads as their (clean) label
    rows = []
    for model in models:
        for rate in rates:
            for d in range(draws):
                rng = np.random.default_rng([seed, NOISE_STREAM, MODELS.index(model), int(rate * 1e6), d])
                noisy, flipped = flip_labels(labels, rate, model, rng, second)
                table = audit.label_issue_table(noisy, mean)
                found = rankings(member_probs, noisy, table)
                flagged = table["is_label_issue"].astype(bool)
                rows.append({"model": model, "rate": rate, "draw": d, "flipped": len(flipped),
                             "scores": {k: read_score(v, flipped, read) for k, v in found.items()},
                             "flags": flag_score(flagged, flipped)})
    if review:
        rows.append(review_row(rankings(member_probs, labels, audit.label_issue_table(labels, mean)), review))
    return rows


def review_row(found: dict[str, np.ndarray], review: list[dict]) -> dict:
    """The row of the clean labels' check against the human review: each ranking's (HIGHER = more suspect)
    reviewed errors in the top 100 and average precision."""
    checks = {}
    for name, s in found.items():
        v = validate.validate_ranking(scores.rank(s), review)
        checks[name] = {"errors_in_top_100": v["errors_in_top_100"], "average_precision": v["average_precision"]}
    return {"model": "human review", "checks": checks}


def summarise(per_run: list[list[dict]]) -> dict:
    """(model, rate) -> {ranking: (mean, std) of AP, recall at k and ap_read; "flags": (mean, std) of precision,
    recall and the count}, where each run's value is the mean over its draws; and the review check's per-run
    values."""
    out: dict = {}
    for rows in per_run:
        by_key: dict = {}
        for r in rows:
            if r["model"] == "human review":
                for name, c in r["checks"].items():
                    out.setdefault(("human review", name), []).append(c)
                continue
            by_key.setdefault((r["model"], r["rate"]), []).append(r)
        for key, rs in by_key.items():
            run_means = {name: {m: _mean([r["scores"][name][m] for r in rs])
                                for m in ("ap", "recall_at_k", "ap_read")} for name in rs[0]["scores"]}
            run_means["flags"] = {m: float(np.mean([r["flags"][m] for r in rs])) for m in ("precision", "recall",
                                                                                          "flagged")}
            for name, v in run_means.items():
                out.setdefault(key, {}).setdefault(name, []).append(v)
    summary: dict = {}
    for key, v in out.items():
        if key[0] == "human review":
            summary[key] = v
            continue
        summary[key] = {name: {m: _mean_std([x[m] for x in vals]) for m in vals[0]} for name, vals in v.items()}
    return summary


def _mean(values: list[float]) -> float:
    """The mean of the values that are numbers (ap_read is NaN for a draw with no blend read as labelled); NaN
    if none is."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Over the runs with a value: a spread needs two of them (NaN where values were left out, 0 for one run)."""
    kept = [v for v in values if not math.isnan(v)]
    spread = float(np.std(kept, ddof=1)) if len(kept) > 1 else (0.0 if len(values) == 1 else math.nan)
    return _mean(kept), spread


def as_json(value):
    """`value` with every NaN as None (JSON's null): strict readers refuse a bare NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    return value


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def table_md(summary: dict, runs: int) -> str:
    """Markdown: AP (and ap_read) per noise model and rate for every ranking, the flags, then the review check;
    with one run, no spread."""
    keys = [k for k in summary if k[0] != "human review"]
    names = [n for n in summary[keys[0]] if n != "flags"] if keys else []
    spread = (lambda sd: f" ± {sd:.3f}") if runs > 1 else (lambda sd: "")  # noqa: E731
    what = f"AP mean ± std over {runs} runs" if runs > 1 else "AP of one run (one seed: no spread)"
    lines = [f"{what} (in brackets: ap_read, over the digits the ensemble reads as labelled)", "",
             "| noise | rate | " + " | ".join(names) + " | cleanlab's flags: precision / recall / flagged |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for key in keys:
        v = summary[key]
        f = v["flags"]
        lines.append(f"| {key[0]} | {key[1]:g} | " + " | ".join(f"{v[n]['ap'][0]:.3f}{spread(v[n]['ap'][1])} "
                                                            f"({_cell(v[n]['ap_read'][0])})" for n in names)
                     + f" | {f['precision'][0]:.2f} / {f['recall'][0]:.2f} / {f['flagged'][0]:.0f} |")
    checks = [(k[1], v) for k, v in summary.items() if k[0] == "human review"]
    if checks:
        lines += ["", "| ranking (clean labels) | reviewed errors in the top 100, per run | review AP, per run |",
                  "|---|---|---|"]
        for name, v in checks:
            lines.append(f"| {name} | " + " / ".join(str(c["errors_in_top_100"]) for c in v) + " | "
                         + " / ".join(f"{c['average_precision']:.3f}" for c in v) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run directories, one per seed")
    p.add_argument("--rates", default="0.01,0.001")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--draws", type=int, default=3, help="flip draws per run, noise model and rate")
    p.add_argument("--out", type=Path, default=None, help="write every row and the summary here (JSON)")
    args = p.parse_args(argv)
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown noise model {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.draws < 1:
        p.error(f"--draws: need at least 1, got {args.draws}")
    rates = [float(r) for r in args.rates.split(",")]
    per_run = []
    for run_dir in args.runs:
        member_probs, labels = load(run_dir)
        recipe = json.loads(manifest.verified(run_dir, rundir.SUMMARY_FILE).read_text())["recipe"]
        seed, dataset = recipe["seed"], recipe["dataset"]
        review = validate.load_review() if dataset == "mnist" and len(labels) == 10000 else []
        per_run.append(one_run(member_probs, labels, seed, rates, args.draws, models, review))
        print(f"{run_dir}: seed {seed}, {len(labels)} test digits", flush=True)
    summary = summarise(per_run)
    text = table_md(summary, len(per_run))
    print(text)
    if args.out is not None:
        args.out.write_text(json.dumps(as_json({"runs": [str(r) for r in args.runs], "rows": per_run,
                                                "table": text}), indent=1, default=str, allow_nan=False))
    return summary


if __name__ == "__main__":
    main()
