"""Blended-digit benchmark: does the test audit find digits whose label no reader could trust?

Known answers, of the kind test_noise.py's flips cannot give: the published review's "neither" and "no majority"
digits (3520, 8527) are read by the networks as their given label, and a flip we make is a label they contradict.
Here a seeded fraction of a finished run's test digits is replaced by a blend of the digit and a digit of the class
the run's ensemble finds most likely for it after its given label, alpha * digit + (1 - alpha) * other, alpha
uniform in ALPHA, keeping the given label: an image a reader could call either class, or neither. The blends go
through the run's members (torch, as the run) for their probabilities and unfamiliarity; every other digit is
scored as it is. No training. Every ranking (HIGHER = more suspect) is scored by average precision and recall at k
(k = the blends), and `ap_read` over the digits the ensemble reads as their label (there a blend is, like 3520 and
8527, a label the networks accept). cleanlab's flags by precision and recall. The clean labels against the human review, as a
check (never tuned on).

    python bench/test_blends.py RUN [RUN ...] [--rates 0.01,0.001] [--draws 3] [--out test_blends.json]

Mean +- std (n - 1) over the runs (give runs of different seeds); each run's number is the mean of its draws.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is a script folder, not the package

from ambiguous_digits import audit, data, manifest, predict, rundir, scores, validate  # noqa: E402
from bench import test_noise  # noqa: E402
from bench.label_noise import rank_average  # noqa: E402

# The blend's own seed stream, apart from the runs' and test_noise's flips.
BLEND_STREAM = 11
# The digit's share of the blend: at 0.5 the two digits are equal, at 0.7 the given one shows clearly.
ALPHA = (0.5, 0.7)


def other_class(mean: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) the class the (N, K) ensemble mean finds most likely for each digit, its given label apart."""
    others = mean.astype(np.float64)
    others[np.arange(len(labels)), labels] = -np.inf
    return others.argmax(axis=1)


def blend(x: np.ndarray, labels: np.ndarray, partner: np.ndarray, rate: float, rng: np.random.Generator,
          alpha: tuple[float, float] = ALPHA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(blended (n, 28, 28) uint8, their sorted positions (n,), the digits blended in (n,)): round(rate * N) digits
    (at least 1), each blended with a random unchosen digit labelled `partner` of it (a class not its own), the
    digit's share uniform in `alpha`; labels are kept. ValueError when no unchosen digit of that class is left."""
    count = max(1, round(rate * len(labels)))
    pos = np.sort(rng.choice(len(labels), size=count, replace=False))
    free = np.ones(len(labels), dtype=bool)
    free[pos] = False
    share = rng.uniform(*alpha, size=count)[:, None, None]
    others = []
    for i in pos:
        pool = np.flatnonzero(free & (labels == partner[i]))
        if not len(pool):
            raise ValueError(f"no digit labelled {partner[i]} is left to blend digit {i} with; give a lower rate "
                             f"or a run of more test digits")
        others.append(rng.choice(pool))
    others = np.array(others, dtype=np.int64)
    mixed = share * x[pos].astype(np.float64) + (1 - share) * x[others].astype(np.float64)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8), pos, others


def rankings(member_probs: np.ndarray, labels: np.ndarray, pct: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    """test_noise's rankings, the ensemble's entropy, the unfamiliarity percentile (N,), and the run's audit
    rank-averaged with each of the two; with the audit's table (cleanlab's flags)."""
    mean = test_noise.ensemble_mean(member_probs)
    table = audit.label_issue_table(labels, mean)
    found = test_noise.rankings(member_probs, labels, table)
    found["entropy"] = scores.entropy(mean)
    found["unfamiliarity"] = pct
    found["run_audit+entropy"] = rank_average(found["run_audit"], found["entropy"])
    found["run_audit+unfamiliarity"] = rank_average(found["run_audit"], pct)
    return found, table


def one_run(run_dir: Path, rates: list[float], draws: int, device: str, data_dir: Path | None = None) -> list[dict]:
    """Rows (model "blend", rate, draw, scores, flags, how the ensemble reads the blends) for one run, plus the
    review check on the clean labels (MNIST's full test set only)."""
    member_probs, labels = test_noise.load(run_dir)
    recipe = json.loads(manifest.verified(run_dir, rundir.SUMMARY_FILE).read_text())["recipe"]
    ensemble, _, dataset = predict.load_ensemble(run_dir, device, in_numpy=False)
    familiar = predict.load_familiar(run_dir, warn=lambda _: None)
    if familiar is None:
        raise SystemExit(f"bench/test_blends.py: {run_dir} has no embeddings.npz; re-run it with this version")
    ds = data.load_dataset(dataset, data_dir, log=lambda _: None, progress=False)
    x = ds.x_test[:len(labels)]  # a --test-limit run scored the first test digits
    if not np.array_equal(ds.y_test[:len(labels)], labels):
        raise SystemExit(f"bench/test_blends.py: {run_dir}'s test labels are not {dataset}'s first {len(labels)}")
    _, clean = predict.see(ensemble, familiar, x)  # every digit's unfamiliarity by the same pass as the blends'
    partner = other_class(test_noise.ensemble_mean(member_probs), labels)
    rows = []
    for rate in rates:
        for d in range(draws):
            rng = np.random.default_rng([recipe["seed"], BLEND_STREAM, int(rate * 1e6), d])
            try:
                mixed, pos, _ = blend(x, labels, partner, rate, rng)
            except ValueError as e:
                raise SystemExit(f"bench/test_blends.py: --rates {rate:g} on {run_dir}: {e}") from None
            seen, unfamiliar = predict.see(ensemble, familiar, mixed)
            probs, pct = member_probs.copy(), clean.pct.copy()
            probs[:, pos], pct[pos] = seen, unfamiliar.pct
            found, table = rankings(probs, labels, pct)
            read = test_noise.ensemble_mean(probs).argmax(axis=1) == labels
            rows.append({"model": "blend", "rate": rate, "draw": d, "flipped": len(pos),
                         "read_as_label": float(read[pos].mean()),
                         "scores": {k: test_noise.read_score(v, pos, read) for k, v in found.items()},
                         "flags": test_noise.flag_score(table["is_label_issue"].astype(bool), pos)})
    if dataset == "mnist" and len(labels) == 10000:
        rows.append(test_noise.review_row(rankings(member_probs, labels, clean.pct)[0], validate.load_review()))
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run directories, one per seed")
    p.add_argument("--rates", default="0.01,0.001")
    p.add_argument("--draws", type=int, default=3, help="blend draws per run and rate")
    p.add_argument("--device", default="cpu", help="where the members score the blends (auto, cpu, cuda[:N])")
    p.add_argument("--data-dir", type=Path, default=None, help="cache of the runs' data set (default: its default)")
    p.add_argument("--out", type=Path, default=None, help="write every row and the summary here (JSON)")
    args = p.parse_args(argv)
    if args.draws < 1:
        p.error(f"--draws: need at least 1, got {args.draws}")
    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        p.error(f"--rates: expected fractions separated by commas, got {args.rates}")
    if not all(0 < r < 1 for r in rates):
        p.error(f"--rates: each rate must lie between 0 and 1, got {args.rates}")
    per_run = []
    for run_dir in args.runs:
        per_run.append(one_run(run_dir, rates, args.draws, args.device, args.data_dir))
        read = np.mean([r["read_as_label"] for r in per_run[-1] if r["model"] == "blend"])
        print(f"{run_dir}: the ensemble reads {read:.0%} of the blends as their given label", flush=True)
    summary = test_noise.summarise(per_run)
    text = test_noise.table_md(summary, len(per_run))
    print(text)
    if args.out is not None:
        args.out.write_text(json.dumps(test_noise.as_json({"runs": [str(r) for r in args.runs], "alpha": ALPHA,
                                                           "rows": per_run, "table": text}),
                                       indent=1, default=str, allow_nan=False))
    return summary


if __name__ == "__main__":
    main()
