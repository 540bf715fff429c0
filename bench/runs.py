"""`ambiguous-digits run` in a subprocess, as a user runs it, timed: for the benchmarks that time whole runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Lines of a failed run's stderr shown before the benchmark's one-line error.
STDERR_TAIL = 20


def pythonpath(src: Path) -> str:
    """PYTHONPATH with `src` first, so a subprocess imports the package there; the user's own entries after it."""
    return os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH")) if p)


def timed_run(out: Path, args: list[str], env: dict[str, str] | None = None) -> dict:
    """One `run --out out --quiet *args` (the package `env`'s PYTHONPATH finds, else the installed one): its wall
    seconds, and its summary's training seconds and test accuracy. SystemExit in one line if it fails."""
    # -P: the working folder must not put another copy of the package ahead of the one asked for.
    argv = [sys.executable, "-P", "-m", "ambiguous_digits.cli", "run", "--out", str(out), "--quiet", *args]
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        print("\n".join(lines[-STDERR_TAIL:]), file=sys.stderr)  # a traceback's context, above the one line
        raise SystemExit(f"{out}: `run` failed with exit {done.returncode} ({lines[-1] if lines else 'no message'})")
    try:
        summary = json.loads((out / "summary.json").read_text())
        return {"wall_s": round(wall, 3), "train_s": summary["seconds"]["train"],
                "test_accuracy": summary["test_accuracy"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{out / 'summary.json'}: no training seconds and test accuracy to read "
                         f"({type(e).__name__}: {e})") from None
