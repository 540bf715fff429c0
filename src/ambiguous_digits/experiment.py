"""`experiment`: do augmentation and a second pass on ambiguous training digits improve the CNN?

The original analysis suggested both, untested. Each variant below trains one CNN on
each of `--seeds` seeds and is scored on the test set (mean ± std over the seeds);
the best variant's seeds are then averaged into an ensemble. The second pass
("emphasis") oversamples the most ambiguous TRAINING digits, ranked by the training
set's audit (the run's cross-fitted one, or `audit --split train`). Test digits are never trained
on: every variant is measured on them, so training on them would be leakage.

It runs in the directory of a finished default `run`, whose numbers give the
"impact, quantified" part: how many of the test errors the most ambiguous digits
hold, and what accuracy becomes once the human-confirmed label errors are fixed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import experiment_table, files, manifest, outputs, rundir, scores, validate
from .commands.common import environment, load, refresh_report, subset
from .config import ConfigError, ExperimentPlan, Invocation, Recipe
from .train import Runtime, predict_probs, setup, train

TRAIN_AUDIT = rundir.AUDIT["train"]
LEAKAGE = ("Emphasis oversamples training digits only (ranked by the training-set audit); training on the test "
           "digits every variant is evaluated on would be leakage, so the emphasis step refuses them.")
# The second pass starts from a converged model: a full-height one-cycle peak would
# first undo much of what the first pass learned, so it peaks lower.
FINETUNE_LR_SCALE = 0.25
# How many of the baseline's most ambiguous test digits each variant is checked on.
TOP_AMBIGUOUS = 10
# Impact: the share of the default run's errors held by its k most ambiguous digits.
IMPACT_TOPS = (10, 50)
ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class Variant:
    """One way of training: with or without augmentation, and which second pass, if any."""

    augment: bool
    second_pass: str | None  # None, "emphasis" (ambiguous training digits oversampled) or "uniform"
    title: str
    about: str


# In training order: a second pass starts from the same seed's first-pass model with the same augmentation.
VARIANTS = {
    "baseline": Variant(False, None, "baseline", "the default single CNN, without augmentation"),
    "augmentation": Variant(True, None, "augmentation",
                            "the same CNN with random affine augmentation of every training digit"),
    "emphasis": Variant(False, "emphasis", "emphasis",
                        "baseline + a second pass that oversamples the most ambiguous training digits"),
    "augmentation_emphasis": Variant(True, "emphasis", "augmentation + emphasis",
                                     "augmentation + the same second pass; every oversampled copy gets its own "
                                     "random affine transform"),
    "augmentation_second_pass": Variant(True, "uniform", "augmentation + plain second pass",
                                        "control: augmentation + the same second pass without oversampling "
                                        "(is a gain the emphasis, or just more epochs?)"),
}


class LeakageError(ConfigError):
    """Digits that are not the training digits offered for training (e.g. test digits)."""


# ---------------------------------------------------------------------------
# Emphasis: which training digits the second pass oversamples
# ---------------------------------------------------------------------------
def emphasis_indices(split: str, cv_probs: np.ndarray, audit_labels: np.ndarray, flagged: np.ndarray,
                     train_labels: np.ndarray, top: int) -> np.ndarray:
    """Training-set positions of the `top` most ambiguous training digits, most ambiguous first.

    `cv_probs` (N, K) are the audit's out-of-sample probabilities of the N training
    digits, `audit_labels` (N,) their labels and `flagged` (N,) cleanlab's label-issue
    flags. Ambiguity is 1 - the probability of the given label (HIGHER = more
    ambiguous); flagged digits are left out, since oversampling a wrong label teaches
    the wrong digit. Raises LeakageError unless the audit is of exactly the training
    digits `train_labels` (N,): test digits are never emphasised.
    """
    if split != "train":
        raise LeakageError(f"emphasis: refusing the {split!r} audit; only training digits may be emphasised "
                           f"(training on the test digits we evaluate on would be leakage)")
    if len(audit_labels) != len(train_labels) or not np.array_equal(audit_labels, train_labels):
        raise LeakageError(f"emphasis: the audit's {len(audit_labels)} labels are not those of the "
                           f"{len(train_labels)} training digits (a test audit would be leakage; a different "
                           f"--train-limit?): rerun `run` (or `audit --split train`) with this experiment's --train-limit")
    probs, labels = scores.validate(cv_probs, audit_labels)
    order = np.argsort(-scores.ambiguity(probs, labels), kind="stable")
    return order[~np.asarray(flagged, bool)[order]][:top]


def oversample(x: np.ndarray, y: np.ndarray, emphasised: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The training set with each emphasised digit `factor` times in all (the others once)."""
    if len(emphasised) and not (0 <= emphasised.min() and emphasised.max() < len(x)):
        raise LeakageError(f"emphasis: positions outside the {len(x)} training digits")
    extra = np.repeat(emphasised, factor - 1)
    return np.concatenate([x, x[extra]]), np.concatenate([y, y[extra]])


def load_train_audit(run_dir: Path) -> dict:
    """The training-set audit in run_dir: split, cross-validated probs, labels, cleanlab's flags."""
    missing = [name for name in (TRAIN_AUDIT.probs, TRAIN_AUDIT.table, TRAIN_AUDIT.summary)
               if not (run_dir / name).is_file()]
    if missing:
        raise ConfigError(f"--out: {run_dir} has no {', '.join(missing)}; run `ambiguous-digits audit --split "
                          f"train --out {run_dir}` first (emphasis needs the training-set audit)")
    path = manifest.verified(run_dir, TRAIN_AUDIT.probs)  # changed since the audit: refused
    try:
        with np.load(path) as z:
            probs, labels = z["probs"], z["labels"]
        scores.validate(probs, labels)
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"{path}: not the audit's probabilities ({e})") from None
    table = outputs.read_table(manifest.verified(run_dir, TRAIN_AUDIT.table))
    if len(table["index"]) != len(labels):
        raise ConfigError(f"{run_dir / TRAIN_AUDIT.table}: {len(table['index'])} rows, but "
                          f"{TRAIN_AUDIT.probs} holds {len(labels)} digits")
    split = json.loads(manifest.verified(run_dir, TRAIN_AUDIT.summary).read_text()).get("split")
    return {"split": split, "cv_probs": probs, "audit_labels": labels, "flagged": table["is_label_issue"] == 1}


# ---------------------------------------------------------------------------
# Scoring: pure numpy over (N, K) probabilities and (N,) labels
# ---------------------------------------------------------------------------
def seed_metrics(probs: np.ndarray, labels: np.ndarray, top: np.ndarray, label_errors: np.ndarray) -> dict:
    """One model's test numbers; `top` and `label_errors` are test indices (rows)."""
    right = probs.argmax(axis=1) == labels
    keep = np.ones(len(labels), bool)
    keep[label_errors] = False
    return {"accuracy": float(right.mean()), "errors": int((~right).sum()), "nll": scores.nll(probs, labels),
            "ece": scores.expected_calibration_error(probs, labels), "top_ambiguous_correct": int(right[top].sum()),
            "accuracy_without_label_errors": float(right[keep].mean())}


def summarise(per_seed: list[dict]) -> dict:
    """Each metric's mean and (population) std over the seeds."""
    return {k: {"mean": float(np.mean([m[k] for m in per_seed])), "std": float(np.std([m[k] for m in per_seed]))}
            for k in per_seed[0]}


def top_ambiguous(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Test indices of the k digits with the highest ambiguity (1 - p(label)) under (N, K) probs."""
    return scores.top_indices(scores.rank(scores.ambiguity(probs, labels)), k)


def label_errors_within(review: list[dict], n: int) -> np.ndarray:
    """The human-confirmed label errors among the first n test digits."""
    errors = validate.review_errors(review)
    return errors[errors < n]


def impact(pred: np.ndarray, labels: np.ndarray, rank_ambiguity: np.ndarray, review: list[dict]) -> dict:
    """The default run's errors in its most ambiguous digits, and its accuracy with the label errors fixed.

    Relabelled: the reviewed errors whose majority chose the guessed label ('correctable')
    take that label; the others keep theirs. Removed: every reviewed label error is dropped.
    """
    wrong, n = pred != labels, len(labels)
    errors = int(wrong.sum())
    in_top = {k: int(wrong[scores.top_indices(rank_ambiguity, k)].sum()) for k in IMPACT_TOPS}
    fixed = {r["index"]: r["guessed_label"] for r in review if r["verdict"] == "correctable" and r["index"] < n}
    relabelled = labels.copy()
    relabelled[list(fixed)] = list(fixed.values())
    keep = np.ones(n, bool)
    keep[label_errors_within(review, n)] = False
    return {"test_digits": n, "errors": errors, "accuracy": float(1 - wrong.mean()), "reviewed": bool(review),
            "errors_in_top": {str(k): {"errors": e, "share": e / errors if errors else 0.0} for k, e in in_top.items()},
            "relabelled": len(fixed), "accuracy_relabelled": float((pred == relabelled).mean()),
            "removed": int((~keep).sum()), "accuracy_removed": float((pred[keep] == labels[keep]).mean())}


def compare(probs: dict[str, np.ndarray], labels: np.ndarray, review: list[dict]) -> dict:
    """Every variant's numbers from its (S, N, K) test probabilities, plus the best variant's ensemble."""
    top = top_ambiguous(probs["baseline"].mean(axis=0), labels, TOP_AMBIGUOUS)
    errors = label_errors_within(review, len(labels))
    results = {}
    for name, p in probs.items():
        per_seed = [seed_metrics(s, labels, top, errors) for s in p]
        v = VARIANTS[name]
        results[name] = {"title": v.title, "about": v.about, "per_seed": per_seed, **summarise(per_seed)}
    best = max(probs, key=lambda name: results[name]["accuracy"]["mean"])
    ens = [seed_metrics(probs[best].mean(axis=0), labels, top, errors)]
    results[ENSEMBLE] = {"title": f"ensemble of {VARIANTS[best].title}", "of": best, "per_seed": ens,
                         "about": f"the mean of the {len(probs[best])} {best} models' probabilities (no extra "
                                  f"training)", **summarise(ens)}
    return {"variants": results, "best_variant": best, "baseline_top_ambiguous": top.tolist(),
            "top_ambiguous_label_errors": sorted(set(top.tolist()) & set(errors.tolist())),
            "label_errors": errors.tolist()}


# ---------------------------------------------------------------------------
# Training: every variant on one seed
# ---------------------------------------------------------------------------
def _first_pass(v: Variant) -> str:
    return "augmentation" if v.augment else "baseline"


def train_seed(recipe: Recipe, plan: ExperimentPlan, seeds: tuple[int, int], x, y, emphasised: np.ndarray, x_test,
               num_classes: int, rt: Runtime, log) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every variant on one (first pass, second pass) seed pair: test probs (N, K) and training seconds."""
    models, probs, seconds = {}, {}, {}
    for name, v in VARIANTS.items():
        r = dataclasses.replace(recipe, augment=v.augment)
        start = time.perf_counter()
        if v.second_pass is None:
            log(f"  {name}: {recipe.epochs} epoch(s) on {len(x)} digits (seed {seeds[0]})")
            models[name], _ = train(x, y, r, seeds[0], rt, num_classes=num_classes)
        else:
            chosen = emphasised if v.second_pass == "emphasis" else emphasised[:0]
            xs, ys = oversample(x, y, chosen, plan.emphasis_factor)
            r = dataclasses.replace(r, epochs=plan.emphasis_epochs, lr=recipe.lr * FINETUNE_LR_SCALE)
            log(f"  {name}: {r.epochs} more epoch(s) from {_first_pass(v)} on {len(xs)} digits (seed {seeds[1]})")
            models[name], _ = train(xs, ys, r, seeds[1], rt, num_classes=num_classes, init=models[_first_pass(v)])
        seconds[name] = time.perf_counter() - start
        probs[name] = predict_probs(models[name], x_test, rt.device)
    return probs, seconds


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def _check_run(recipe: Recipe, run_dir: Path) -> None:
    """run_dir holds a finished run on the recipe's data set (checked before any data are loaded)."""
    missing = [n for n in (rundir.SUMMARY_FILE, rundir.SCORES_FILE) if not (run_dir / n).is_file()]
    if missing:
        raise ConfigError(f"--out: {run_dir} has no {', '.join(missing)}; run `ambiguous-digits run --out {run_dir}` "
                          f"first (the experiment quantifies that run's impact)")
    dataset = rundir.run_dataset(run_dir)  # read through the manifest
    if dataset != recipe.dataset:
        raise ConfigError(f"--dataset: the run in {run_dir} is on {dataset}; pass --dataset {dataset}")


def _load_run(run_dir: Path, y_test: np.ndarray) -> dict[str, np.ndarray]:
    """The default run's scores.csv in run_dir (see _check_run), checked to cover exactly these test digits."""
    table = outputs.read_table(manifest.verified(run_dir, rundir.SCORES_FILE))
    if not np.array_equal(table["label"], y_test):
        raise ConfigError(f"{run_dir / rundir.SCORES_FILE}: scores {len(table['label'])} test digits, not this "
                          f"experiment's {len(y_test)} (use the run's --test-limit)")
    return table


def run_experiment(recipe: Recipe, plan: ExperimentPlan = ExperimentPlan(), inv: Invocation = Invocation(),
                   log=print) -> dict:
    """Train and compare every variant on plan.seeds seeds in inv.out; writes experiment.json and .md."""
    out = inv.out
    if (out / rundir.EXPERIMENT_FILE).exists() and not inv.force:
        raise ConfigError(f"--out: {out / rundir.EXPERIMENT_FILE} exists; pass --force to overwrite it")
    _check_run(recipe, out)
    with rundir.locked(out):
        return _experiment(recipe, plan, inv, log)


def _experiment(recipe: Recipe, plan: ExperimentPlan, inv: Invocation, log) -> dict:
    out = inv.out
    device, precision = setup(inv.device, inv.threads, recipe.precision)
    start = time.perf_counter()
    ds = load(recipe, inv, log)
    x_train, y_train, x_test, y_test = subset(ds, recipe)
    table = _load_run(out, y_test)
    emphasised = emphasis_indices(**load_train_audit(out), train_labels=y_train, top=plan.emphasis_top)
    log(f"emphasis: the {len(emphasised)} most ambiguous training digits appear "
        f"{plan.emphasis_factor}x in the second pass ({plan.emphasis_epochs} epoch(s)); test digits are never "
        f"trained on")
    seeds, runs = plan.pairs(recipe.seed), []
    rt = Runtime(device, precision, inv.progress)
    for s, pair in enumerate(seeds):
        log(f"seed {s + 1}/{len(seeds)}: {len(VARIANTS)} variants")
        runs.append(train_seed(recipe, plan, pair, x_train, y_train, emphasised, x_test, ds.num_classes, rt, log))
    probs = {name: np.stack([r[0][name] for r in runs]) for name in VARIANTS}
    # An earlier experiment's files are unlisted before any is replaced: a kill midway leaves them
    # unlisted (the report shows no experiment), never listed with the sha256 of files now gone.
    manifest.forget(out, rundir.EXPERIMENT_FILE, rundir.EXPERIMENT_TABLE_FILE, rundir.EXPERIMENT_PROBS_FILE)
    rundir.save_npz(out, rundir.EXPERIMENT_PROBS_FILE, labels=y_test, seeds=np.array(seeds, dtype=np.uint64),
                    **{name: p.astype(np.float32) for name, p in probs.items()})
    review = validate.load_review(ds.name) if ds.name in validate.REVIEWS else []
    if not review:
        log(f"no human review of {ds.name}'s test labels exists: accuracy without label errors equals accuracy")
    result = {"leakage": LEAKAGE, "reviewed": bool(review), **compare(probs, y_test, review),
              "impact": {"of": "the default run in this directory",
                         **impact(table["pred"].astype(int), y_test, table["rank_ambiguity"], review)},
              "emphasis": {"digits": len(emphasised), "factor": plan.emphasis_factor, "epochs": plan.emphasis_epochs,
                           "lr": recipe.lr * FINETUNE_LR_SCALE, "most_ambiguous": emphasised[:TOP_AMBIGUOUS].tolist()},
              "train_seconds": {n: float(np.mean([r[1][n] for r in runs])) for n in VARIANTS},
              "seeds": [{"first_pass": a, "second_pass": b} for a, b in seeds],
              "seconds": round(time.perf_counter() - start, 3), "train_digits": len(y_train),
              "environment": environment(device, precision), "recipe": recipe.to_json(),
              "plan": dataclasses.asdict(plan)}
    table_text = markdown(result)
    files.write_json(out / rundir.EXPERIMENT_FILE, result)
    files.write_text(out / rundir.EXPERIMENT_TABLE_FILE, table_text)
    manifest.record(out, out / rundir.EXPERIMENT_FILE, out / rundir.EXPERIMENT_TABLE_FILE)
    refresh_report(out, ds, log)
    return result


def markdown(result: dict) -> str:
    """experiment.md: the comparison table, the impact numbers and the leakage note."""
    head = ["variant", *experiment_table.EXPERIMENT_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = experiment_table.experiment_rows(result)
    lines += ["| " + " | ".join([row["name"], *row["cells"]]) + " |" for row in rows]
    notes = ["", *experiment_table.experiment_notes(result), "", *experiment_table.impact_lines(result["impact"])]
    return "\n".join(lines + notes) + "\n"
