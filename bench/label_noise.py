"""Label-noise benchmark: which ranking finds training labels we flipped ourselves?

Known answers: a seeded fraction of the training labels is flipped, under three noise models:
  - uniform: to any other class, uniformly;
  - pairs: within a confusable pair (PAIRS: 4-9, 3-5, 1-7, 0-6, 2-8), to the other class of the pair;
  - instance: to the class a clean-label analysis finds second most likely for that very digit (its
    out-of-sample probabilities from the run's cross-fitted members on the clean labels).
The noisy data go through the default analysis (`run`, cross-fitted) and, for reference, through the
separate K-fold training audit (`audit --split train`, one CNN per fold) in the same directory. Every
ranking (RANKINGS, HIGHER = more suspect) is scored by average precision and by recall at k (k = the
number of flips: the share of them in the top k) at finding the flipped digits.

    python bench/label_noise.py --out noise/ [--seeds 0,1,2] [--rates 0.01,0.001] [--models uniform,pairs,instance]
                                [--train-limit 12000] [--test-limit 1000] [--threads N]

Writes noise/label_noise.json (every run's numbers and times) and noise/label_noise.md (mean +- std over seeds).
`--rescore` ranks again from the run directories already in --out (their members' dynamics and held-out
probabilities, the K-fold audit's table), training nothing: for a new ranking or a fix to one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

from ambiguous_digits import audit, data, members, outputs, rundir
from ambiguous_digits.commands.audit import K_FOLD, run_audit
from ambiguous_digits.commands.crossfit import dynamics_of, out_of_sample
from ambiguous_digits.commands.run import run
from ambiguous_digits.config import AuditPlan, Invocation, Recipe, RunOutputs

MODELS = ("uniform", "pairs", "instance")
PAIRS = ((4, 9), (3, 5), (1, 7), (0, 6), (2, 8))
# The noise's own seed stream, apart from the runs' (a run's seed decides its members and folds).
NOISE_STREAM = 7
# K-fold reference: the `audit` command's defaults (5 folds, one CNN per fold).
KFOLD = AuditPlan(folds=5, split="train")
KFOLD_MEMBERS = 1
TRAIN_AUDIT = rundir.AUDIT["train"]


# ---------------------------------------------------------------------------
# Bookkeeping (pure numpy): the flips, the rankings, the scores
# ---------------------------------------------------------------------------
def flip_labels(labels: np.ndarray, rate: float, model: str, rng: np.random.Generator,
                second: np.ndarray | None = None, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, sorted flipped indices): round(rate * N) digits (at least 1) drawn among those the model
    can flip (pairs: a class in PAIRS), each moved to another class by `model`. `second` (N,): the clean
    analysis's second most likely class of each digit (instance)."""
    labels = np.asarray(labels, dtype=np.int64)
    partner = np.full(num_classes, -1)
    for a, b in PAIRS:
        partner[a], partner[b] = b, a
    eligible = np.flatnonzero(partner[labels] >= 0) if model == "pairs" else np.arange(len(labels))
    if model == "instance":
        if second is None:
            raise ValueError("instance noise needs each digit's second most likely class")
        eligible = eligible[second[eligible] != labels[eligible]]
    count = max(1, round(rate * len(labels)))
    flipped = np.sort(rng.choice(eligible, size=count, replace=False))
    noisy = labels.copy()
    if model == "uniform":
        noisy[flipped] = (labels[flipped] + rng.integers(1, num_classes, size=count)) % num_classes
    elif model == "pairs":
        noisy[flipped] = partner[labels[flipped]]
    elif model == "instance":
        noisy[flipped] = second[flipped]
    else:
        raise ValueError(f"unknown noise model {model!r}; choose from {', '.join(MODELS)}")
    return noisy, flipped


def rank_average(*suspicion: np.ndarray) -> np.ndarray:
    """Mean over the rankings of each digit's rank percentile (HIGHER = more suspect in all)."""
    return np.mean([np.argsort(np.argsort(s, kind="stable"), kind="stable") / max(len(s) - 1, 1)
                    for s in suspicion], axis=0)


def rankings(audit_table: dict, dyn: dict) -> dict[str, np.ndarray]:
    """Every ranking of the run's own outputs, HIGHER = more suspect: cleanlab on the cross-fitted
    out-of-sample probabilities, the dynamics' AUM, confidence and forgetting, and two combinations."""
    found = {"cleanlab_oos": 1 - audit_table["label_quality"], "aum": -dyn["aum"], "confidence": -dyn["confidence"],
             "forgetting": dyn["forgetting"] - 1e-6 * dyn["confidence"],  # ties (most at 0) by confidence
             "correctness": -dyn["correctness"]}
    found["cleanlab_oos+aum"] = rank_average(found["cleanlab_oos"], found["aum"])
    found["cleanlab_oos+confidence"] = rank_average(found["cleanlab_oos"], found["confidence"])
    return found


def score(suspicion: np.ndarray, flipped: np.ndarray) -> dict[str, float]:
    """Average precision of finding `flipped` (indices) by `suspicion`, and recall in the top k = len(flipped)."""
    truth = np.zeros(len(suspicion), dtype=bool)
    truth[flipped] = True
    top = np.argsort(-suspicion, kind="stable")[: len(flipped)]
    return {"ap": float(average_precision_score(truth, suspicion)), "recall_at_k": float(truth[top].mean())}


def summarise(results: list[dict]) -> dict:
    """(model, rate, ranking) -> mean and sample std (n - 1) over seeds of AP and recall at k, and n."""
    out: dict = {}
    for r in results:
        for name, s in r["scores"].items():
            out.setdefault((r["model"], r["rate"], name), []).append(s)
    return {key: {m: (float(np.mean([s[m] for s in v])), float(np.std([s[m] for s in v], ddof=1)) if len(v) > 1
                      else 0.0, len(v))
                  for m in ("ap", "recall_at_k")} for key, v in out.items()}


def table_md(summary: dict) -> str:
    lines = ["| noise | rate | ranking | AP (mean ± std) | recall at k | seeds |", "|---|---|---|---|---|---|"]
    for (model, rate, name), v in sorted(summary.items(), key=lambda kv: (kv[0][0], -kv[0][1], -kv[1]["ap"][0])):
        lines.append(f"| {model} | {rate:g} | {name} | {v['ap'][0]:.3f} ± {v['ap'][1]:.3f} | "
                     f"{v['recall_at_k'][0]:.3f} ± {v['recall_at_k'][1]:.3f} | {v['ap'][2]} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------
def run_name(model: str, rate: float, seed: int) -> str:
    """The noisy data set's file stem and run directory under --out."""
    return f"{model}-{rate:g}-s{seed}"


def _write_npz(path: Path, x_train, y_train, x_test, y_test) -> None:
    with open(path, "wb") as f:
        np.savez(f, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def analyse(npz: Path, out: Path, seed: int, args, kfold: bool) -> dict:
    """The default analysis of `npz` in `out` (and the K-fold training audit after it): tables and seconds."""
    recipe = Recipe(dataset=f"npz:{npz}", seed=seed, **args.recipe)
    inv = Invocation(out=out, force=True, threads=args.threads, progress=False)
    quiet = lambda _: None  # noqa: E731
    start = time.perf_counter()
    run(recipe, RunOutputs(), inv, log=quiet)
    found = {"run_seconds": time.perf_counter() - start,
             "audit": outputs.read_table(out / TRAIN_AUDIT.table),
             "dynamics": outputs.read_table(out / rundir.DYNAMICS_FILE)}
    with np.load(out / TRAIN_AUDIT.probs) as z:
        found["oos_probs"] = z["probs"]
    if kfold:
        start = time.perf_counter()
        run_audit(Recipe(dataset=f"npz:{npz}", seed=seed, **{**args.recipe, "members": KFOLD_MEMBERS}), KFOLD,
                  inv, log=quiet)
        found["kfold_seconds"] = time.perf_counter() - start
        found["kfold"] = outputs.read_table(out / TRAIN_AUDIT.table)
    return found


def rescore(out: Path) -> list[dict]:
    """Every row of out/label_noise.json scored again from its run directory (no training)."""
    saved = json.loads((out / "label_noise.json").read_text())
    clean = data.load_mnist(progress=False).y_train[: saved["args"]["train_limit"]].astype(np.int64)
    results = []
    for row in saved["results"]:
        name = run_name(row["model"], row["rate"], row["seed"])
        with np.load(out / f"{name}.npz") as z:
            noisy = z["y_train"].astype(np.int64)
        flipped = np.flatnonzero(noisy != clean)
        run_dir = out / name
        m = saved["args"]["members"]
        found = [members.load_member(run_dir, rundir.MEMBER_STEM.format(m=i), seed)
                 for i, seed in enumerate(Recipe(seed=row["seed"], members=m).member_seeds())]
        folds = audit.fold_ids(len(noisy), m, row["seed"])
        table = audit.label_issue_table(noisy, out_of_sample(found, folds, 10))
        dyn = dynamics_of(found, folds, noisy)
        suspicion = rankings(table, dyn)
        if json.loads((run_dir / TRAIN_AUDIT.summary).read_text()).get("method") == K_FOLD:  # the audit ran after
            suspicion["kfold_cleanlab"] = 1 - outputs.read_table(run_dir / TRAIN_AUDIT.table)["label_quality"]
        results.append({**row, "flipped": len(flipped), "scores": {k: score(v, flipped) for k, v in suspicion.items()}})
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rates", default="0.01,0.001")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--train-limit", type=int, default=12000)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--members", type=int, default=Recipe.members)
    p.add_argument("--epochs", type=int, default=Recipe.epochs)
    p.add_argument("--widths", default=",".join(map(str, Recipe.widths)))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-kfold", action="store_true", help="skip the K-fold reference audit")
    p.add_argument("--rescore", action="store_true", help="rank again from the run directories in --out")
    args = p.parse_args(argv)
    if args.rescore:
        results = rescore(args.out)
        saved = json.loads((args.out / "label_noise.json").read_text())
        (args.out / "label_noise.json").write_text(json.dumps({**saved, "results": results}, indent=1, default=str))
        (args.out / "label_noise.md").write_text(table_md(summarise(results)))
        print(table_md(summarise(results)))
        return 0
    args.recipe = {"members": args.members, "epochs": args.epochs, "widths": tuple(map(int, args.widths.split(","))),
                   "pad_first": Recipe.pad_first}  # recorded: the network's first padding changed in 0.13
    seeds, rates = [int(s) for s in args.seeds.split(",")], [float(r) for r in args.rates.split(",")]
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown noise model {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    mnist = data.load_mnist(progress=False)
    x_train, y_train = mnist.x_train[: args.train_limit], mnist.y_train[: args.train_limit].astype(np.int64)
    x_test, y_test = mnist.x_test[: args.test_limit], mnist.y_test[: args.test_limit]
    results = []
    for seed in seeds:
        second = None
        if "instance" in models:  # the clean labels' own analysis: each digit's second most likely class
            npz = args.out / f"clean-s{seed}.npz"
            _write_npz(npz, x_train, y_train, x_test, y_test)
            clean = analyse(npz, args.out / f"clean-s{seed}", seed, args, kfold=False)
            second = np.argsort(-clean["oos_probs"], axis=1, kind="stable")[:, 1]
        for model in models:
            for rate in rates:
                rng = np.random.default_rng([seed, NOISE_STREAM, MODELS.index(model), int(rate * 1e6)])
                noisy, flipped = flip_labels(y_train, rate, model, rng, second)
                name = run_name(model, rate, seed)
                npz = args.out / f"{name}.npz"
                _write_npz(npz, x_train, noisy.astype(np.uint8), x_test, y_test)
                found = analyse(npz, args.out / name, seed, args, kfold=not args.no_kfold)
                suspicion = rankings(found["audit"], found["dynamics"])
                if "kfold" in found:
                    suspicion["kfold_cleanlab"] = 1 - found["kfold"]["label_quality"]
                row = {"model": model, "rate": rate, "seed": seed, "flipped": len(flipped),
                       "scores": {k: score(v, flipped) for k, v in suspicion.items()},
                       "run_seconds": found["run_seconds"], "kfold_seconds": found.get("kfold_seconds")}
                results.append(row)
                best = max(row["scores"], key=lambda k: row["scores"][k]["ap"])
                print(f"{name}: {len(flipped)} flips; best {best} AP {row['scores'][best]['ap']:.3f}; "
                      f"cleanlab_oos {row['scores']['cleanlab_oos']['ap']:.3f}"
                      + (f"; kfold {row['scores']['kfold_cleanlab']['ap']:.3f}" if "kfold_cleanlab" in row["scores"]
                         else "") + f"; run {row['run_seconds']:.0f} s", flush=True)
                (args.out / "label_noise.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                                                if k != "out"} | {"out": str(args.out)},
                                                                       "results": results}, indent=1, default=str))
    summary = summarise(results)
    (args.out / "label_noise.md").write_text(table_md(summary))
    print(table_md(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
