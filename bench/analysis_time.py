"""The whole analysis (this checkout's default `run`) against an earlier version's `run` alone, side by side.

Issue 28's time target: the whole analysis in at most 1.25x the wall time of the `run` of version 0.7.0, the
last before the run audited every digit itself (its audits were two more commands). Each seed runs both, one
command at a time, the order alternating (the reference first on even seeds), so a host that slows down or
speeds up weighs on both. The reference's code comes from this repository's history (`git archive`), unpacked
into a temporary folder and run from there with the same Python and packages; this checkout's from its src/.
Reported per seed: each command's wall seconds, its training seconds and test accuracy (its summary.json), and
the ratio of the two walls; the ratios' mean and standard deviation. Writes OUT/analysis_time.json after every
seed (a failed run keeps the seeds before it); the run directories stay in OUT.

    python bench/analysis_time.py --out at --seeds 0 1 2        # about an hour on 2 cores (AMD EPYC, fp32)
    python bench/analysis_time.py --out at --seeds 0 --train-limit 3000 --test-limit 500 --epochs 1   # smoke
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = REPO / "src"
sys.path.insert(0, str(REPO))  # bench/ is a script folder, not the package
from ambiguous_digits import files  # noqa: E402
from ambiguous_digits.flags import positive_int  # noqa: E402
from bench.runs import pythonpath, timed_run  # noqa: E402
from bench.train_speed import cpu_model  # noqa: E402

# Version 0.7.0's last commit: members on all 60,000 training digits, no audit inside the run.
REFERENCE = "d8afe8761b776983dfb1896f8d0e10aa3ae1859e"
# The target for the ratio of the two walls, met by the mean over at least TARGET_SEEDS seeds.
TARGET_RATIO = 1.25
TARGET_SEEDS = 3
SIDES = ("reference", "ours")
REPORT_FILE = "analysis_time.json"
# Flags passed to both commands unchanged (smoke runs on slices); both versions take them.
PASSED = ("train_limit", "test_limit", "epochs", "members", "data_dir")


def order(seed: int) -> tuple[str, str]:
    """Which command runs first for `seed`: the reference on even seeds, ours on odd."""
    return SIDES if seed % 2 == 0 else SIDES[::-1]


def reference_source(commit: str, dest: Path, repo: Path = REPO) -> Path:
    """Unpack `commit`'s src/ into dest; returns the folder to put on PYTHONPATH. SystemExit (one line) if git
    or the commit is missing."""
    try:
        tar = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit, "src"],
                             capture_output=True, check=True).stdout
    except FileNotFoundError:
        raise SystemExit("analysis_time.py: git is not installed; it takes the reference's code from the "
                         "repository's history") from None
    except subprocess.CalledProcessError as e:
        why = e.stderr.decode(errors="replace").strip().splitlines()
        raise SystemExit(f"--reference {commit}: not a commit of {repo} with a src/ folder "
                         f"({why[-1] if why else 'git archive failed'})") from None
    # The archive is this repository's own; the "data" filter (Python 3.11.4 on) refuses odd members anyway.
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(dest, **safe)
    return dest / "src"


def summarize(rows: list[dict], sliced: bool = False) -> dict:
    """Per-seed rows ({"seed", "reference": {...}, "ours": {...}}) -> each seed's ratio of the walls (ours over the
    reference) and their mean and sample standard deviation (0 for one seed); whether the target is met, None where
    it cannot be judged (fewer than TARGET_SEEDS seeds, or `sliced`: runs on a slice or with other settings)."""
    ratios = [r["ours"]["wall_s"] / r["reference"]["wall_s"] for r in rows]
    walls = {side: [r[side]["wall_s"] for r in rows] for side in SIDES}
    return {"ratios": [round(x, 3) for x in ratios], "ratio_mean": statistics.mean(ratios),
            "ratio_std": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
            "wall_mean_s": {side: statistics.mean(v) for side, v in walls.items()},
            "target_ratio": TARGET_RATIO,
            "met": statistics.mean(ratios) <= TARGET_RATIO if len(ratios) >= TARGET_SEEDS and not sliced else None}


def render(report: dict) -> str:
    lines = ["| seed | reference: wall (training) | ours: wall (training) | ratio |", "|---|---|---|---|"]
    for r, ratio in zip(report["seeds"], report["summary"]["ratios"]):
        ref, ours = r["reference"], r["ours"]
        lines.append(f"| {r['seed']} | {ref['wall_s']:.1f} s ({ref['train_s']:.1f} s) | {ours['wall_s']:.1f} s "
                     f"({ours['train_s']:.1f} s) | {ratio:.3f} |")
    s = report["summary"]
    lines.append(f"| mean | {s['wall_mean_s']['reference']:.1f} s | {s['wall_mean_s']['ours']:.1f} s | "
                 f"**{s['ratio_mean']:.3f} ± {s['ratio_std']:.3f}** (target: at most {TARGET_RATIO}) |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="analysis_time.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="a new folder for the run directories and the report")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--reference", default=REFERENCE, help="the commit whose `run` is the reference")
    for flag in ("--train-limit", "--test-limit", "--epochs", "--members"):  # smoke runs on slices
        p.add_argument(flag, type=positive_int, default=None)
    p.add_argument("--data-dir", type=Path, default=None, help="MNIST cache (as for `run`)")
    a = p.parse_args(argv)
    if len(set(a.seeds)) < len(a.seeds) or min(a.seeds) < 0:
        p.error(f"--seeds: expected distinct non-negative seeds, got {a.seeds}")
    if a.reference.startswith("-"):  # git would read it as an option
        p.error(f"--reference: expected a commit, got {a.reference!r}")
    if a.out.exists() and not a.out.is_dir():
        p.error(f"--out {a.out}: not a folder")
    try:
        if a.out.exists() and any(a.out.iterdir()):
            p.error(f"--out {a.out}: not empty; give a new folder (its runs would be refused or mixed)")
    except OSError as e:
        p.error(f"--out {a.out}: cannot read it ({e.strerror})")
    return a


def passed_flags(a: argparse.Namespace) -> list[str]:
    flags = []
    for name in PASSED:
        value = getattr(a, name)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    try:
        a.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"--out {a.out}: cannot create it ({e.strerror})") from None
    rows: list[dict] = []
    passed = passed_flags(a)
    report = {"cpu": cpu_model(), "cores": os.cpu_count(), "reference": a.reference, "flags": passed,
              "seeds": rows}
    with tempfile.TemporaryDirectory(prefix="analysis_time-") as tmp:
        srcs = {"reference": reference_source(a.reference, Path(tmp)), "ours": OURS}
        for seed in a.seeds:
            row = {"seed": seed}
            for side in order(seed):
                row[side] = timed_run(a.out / f"{side}_{seed}", ["--seed", str(seed), *passed],
                                      env={**os.environ, "PYTHONPATH": pythonpath(srcs[side])})
                print(f"seed {seed}, {side}: {row[side]['wall_s']:.1f} s wall", flush=True)
            rows.append(row)
            report["summary"] = summarize(rows, sliced=bool(passed))
            files.write_json(a.out / REPORT_FILE, report)  # after every seed: a later failure keeps the finished ones
    print(render(report))
    return report


if __name__ == "__main__":
    main()
