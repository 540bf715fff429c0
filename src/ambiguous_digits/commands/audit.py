"""`audit`: check -> load -> K-fold cross-validated probabilities, pooled with the run's members -> cleanlab -> write."""

from __future__ import annotations

import json
import time

import numpy as np

from .. import audit, data, evidence, jobs, manifest, neighbours, outputs, rundir, scores
from ..config import AuditPlan, ConfigError, Invocation, Recipe
from ..ensemble import MemberPlan, train_members, where
from .common import (Log, begin, check_classes, check_limits, environment, load, merge_neighbours, refresh_report,
                     subset, write_images)

# How an audit's out-of-sample probabilities were made: this command's K folds, or the run's cross-fitted members.
K_FOLD, CROSS_FIT = "k-fold", "cross-fit"


def check(recipe: Recipe, plan: AuditPlan, inv: Invocation) -> None:
    """The flags against the directories, before the data are loaded; writes nothing."""
    plan.check_folds(plan.images(recipe))
    _check_no_audit(plan, inv)
    rundir.check_out_dir(inv.out, force=True)


def _check_no_audit(plan: AuditPlan, inv: Invocation) -> None:
    """The audit may join a finished run's directory and replace the run's own cross-fitted audit, but never
    overwrites a K-fold audit without --force."""
    files_ = rundir.AUDIT[plan.split]
    table = inv.out / files_.table
    earlier = manifest.listed_json(inv.out, files_.summary) if (inv.out / manifest.MANIFEST_FILE).is_file() else None
    if table.exists() and not inv.force and (earlier or {}).get("method") != CROSS_FIT:
        raise ConfigError(f"--out: {table} exists; pass --force to overwrite it")
    in_progress = earlier is not None and manifest.listed(inv.out, files_.config)
    if in_progress and not inv.force and not rundir.audit_finished(inv.out, plan.split):  # its folds would go
        raise ConfigError(f"--out: {inv.out} holds a {plan.split}-set audit in progress; "
                          f"`{rundir.resume_command(inv.out, plan.split)}` continues it, --force starts another")


def claim(recipe: Recipe, plan: AuditPlan, inv: Invocation, ds: data.Dataset, images: int) -> None:
    """Once the data are loaded and the directory locked: --folds against the split's images, the data against
    a run already in inv.out, then claim inv.out for this split's audit (checked again: the load may have taken
    minutes). An interrupted audit's folds are dropped (resume them with --resume)."""
    plan.check_folds(images)
    _check_no_audit(plan, inv)
    rundir.check_same_data(inv.out, ds, plan.split, images)
    with rundir.claiming(inv.out):
        rundir.clear_audit(inv.out, plan.split)
        rundir.save_audit_config(inv.out, recipe, plan, inv)
        rundir.CLAIMED.add(inv.out)
    rundir.save_json(inv.out, rundir.AUDIT[plan.split].data, ds.record())


def cross_val_probs(recipe: Recipe, plan: AuditPlan, inv: Invocation, extra, x, y, num_classes: int, log: Log):
    """Out-of-sample probabilities (N, K) for every image of (x, y), and the (N,) fold of each.

    Every member of every fold is an independent job on inv.backend (jobs.fold_member_job, seeded by
    recipe.member_seeds(fold)), saved as it finishes; all folds' jobs run at once.
    """
    folds = audit.fold_ids(len(y), plan.folds, recipe.seed)
    members = [MemberPlan(rundir.FOLD_STEM.format(split=plan.split, f=f, m=m), seed,
                          f"fold {f + 1}/{plan.folds}, member {m + 1}/{recipe.members}",
                          {"num_classes": num_classes, "fold": f}, y[folds == f],
                          len(extra[1]) + int((folds != f).sum()))
               for f in range(plan.folds) for m, seed in enumerate(recipe.member_seeds(fold=f))]
    shared = {"extra_x": extra[0], "extra_y": extra[1], "x": x, "y": y, "folds": folds}
    results = train_members(recipe, inv, members, jobs.fold_member_job, shared, log, desc="fold members")
    probs = np.zeros((len(y), num_classes), dtype=np.float32)
    for f in range(plan.folds):
        held = folds == f
        probs[held] = np.mean([r.probs for r in results[f * recipe.members : (f + 1) * recipe.members]], axis=0)
        log(f"fold {f + 1}/{plan.folds}: accuracy on its {held.sum()} held-out images "
            f"{(probs[held].argmax(1) == y[held]).mean():.2%}")
    return probs, folds


def run_audit(recipe: Recipe, plan: AuditPlan = AuditPlan(), inv: Invocation = Invocation(), log: Log = print,
              resume: bool = False) -> dict:
    """Rank every digit of plan.split by how likely its label is wrong; writes the table and images.

    With `resume`, recipe and plan are the audit's own (rundir.load_audit_config) and finished fold
    members are loaded.
    """
    files_ = rundir.AUDIT[plan.split]
    if resume and rundir.audit_finished(inv.out, plan.split):
        log(f"{inv.out} holds a finished {plan.split}-set audit; nothing to resume")
        return json.loads(manifest.verified(inv.out, files_.summary).read_text())
    device, precision = begin(recipe, inv, resume, lambda: check(recipe, plan, inv))
    start = time.perf_counter()
    ds = load(recipe, inv, log)
    x_train, y_train, x_test, y_test = subset(ds, recipe)
    if plan.split == "test":
        extra, x, y = (x_train, y_train), x_test, y_test
    else:
        extra, x, y = (x_train[:0], y_train[:0]), x_train, y_train
    if not resume:
        # Other data before the limits: an audit inherits a run's limits, which another data set may not reach.
        rundir.check_same_data(inv.out, ds, plan.split)
        check_limits(recipe, ds)
        check_classes(recipe, ds, (plan.split,))
        rundir.prepare_out_dir(inv.out, force=True)
    with rundir.locked(inv.out):
        if resume:
            rundir.check_resume_data(inv.out, files_.data, ds)
        else:
            claim(recipe, plan, inv, ds, len(y))  # a user data set's size is known only now
        log(f"{plan.folds} folds of {recipe.members} CNN(s), {where(inv, device, precision)}")
        probs, folds = cross_val_probs(recipe, plan, inv, extra, x, y, ds.num_classes, log)
        rundir.forget_audit(inv.out, plan.split)  # the earlier audit (the run's, say) stayed until now
        rundir.save_npz(inv.out, files_.probs, probs=probs, labels=y, folds=folds, index=np.arange(len(y)))
        pooled, run_members = _pool_with_run(recipe, plan, inv, probs, y)
        if run_members:
            log(f"pooling the {recipe.members} cross-validated CNN(s) per digit with the run's {run_members} "
                f"members (trained on the training set only, so also out-of-sample for every test digit)")
        table = audit.label_issue_table(y, pooled)
        names = ds.class_names
        top = write_audit(inv.out, plan.split, plan.top, table, x, names, _embeddings(inv.out, len(y_train),
                                                                                     len(y_test)), y_train)
        summary = {
            "split": plan.split, "method": K_FOLD, "audit_id": rundir.audit_id(inv.out, plan.split),
            "digits": len(y), "folds": plan.folds,
            "members_per_fold": recipe.members,
            "run_members_pooled": run_members,
            "cv_accuracy": float((probs.argmax(1) == y).mean()),
            "label_issues_found": int(table["is_label_issue"].sum()),
            "top": [int(i) for i in top],
            "top_labels": [[names[y[i]], names[table["suggested_label"][i]]] for i in top],
            "quality_method": audit.QUALITY_METHOD,
            "fold_seeds": [recipe.member_seeds(fold=f) for f in range(plan.folds)],
            "seconds": round(time.perf_counter() - start, 3),
            "data": ds.record(),
            "environment": environment(device, precision), "recipe": recipe.to_json(),
            "audit": {"folds": plan.folds, "split": plan.split, "top": plan.top}, "invocation": inv.to_json(),
        }
        rundir.save_json(inv.out, files_.summary, summary)
        refresh_report(inv.out, ds, log)
    return summary


def write_audit(out, split: str, top_k: int, table: dict[str, np.ndarray], x: np.ndarray, names: tuple[str, ...],
                embedded: dict[str, np.ndarray] | None, y_train: np.ndarray, near: np.ndarray | None = None) -> np.ndarray:
    """One split's label audit (`audit`'s, or the run's cross-fitted one): the reasons column where the run's
    embeddings are at hand, the table, the top digits' images and sheet, their neighbours; returns the top rows.
    `near` (N, k): the audited digits' nearest training digits' labels, where the caller has them already."""
    top = scores.top_indices(table["rank"].astype(float), top_k)
    if embedded is not None:
        if near is None:
            searched = np.arange(len(x)) if split == "test" else np.union1d(top, np.flatnonzero(table["is_label_issue"]))
            near = _own_neighbours(split, embedded, y_train, searched)
        table["reasons"] = np.array(evidence.label_issue_reasons(table, near, names))
    _write_results(out, split, top, table, x, names)
    if embedded is not None:
        merge_neighbours(out, _neighbours(split, table, top, embedded, y_train))
    return top


def _write_results(out, split: str, top: np.ndarray, table: dict[str, np.ndarray], x: np.ndarray,
                   names: tuple[str, ...]) -> None:
    """The label-issue table, the top digits' images and their contact sheet."""
    f, y = rundir.AUDIT[split], table["given_label"]
    outputs.write_table(out / f.table, table)
    written = write_images(out, f.images, x, top)
    titles = [f"#{i}: {names[y[i]]} \u2192 {names[table['suggested_label'][i]]}\nq={table['label_quality'][i]:.2g}"
              for i in top]
    outputs.contact_sheet(out / f.sheet, x[top], titles,
                          f"Top {len(top)} suspected label errors ({split} set; given \u2192 suggested)")
    manifest.record(out, out / f.table, out / f.sheet, *written)


def _embeddings(out, n_train: int, n_test: int) -> dict[str, np.ndarray] | None:
    """The run's embeddings in `out` (float32), when it has them for exactly these digits."""
    if not manifest.listed(out, rundir.EMBEDDINGS_FILE):
        return None
    with np.load(manifest.verified(out, rundir.EMBEDDINGS_FILE), allow_pickle=False) as z:
        embedded = {s: z[s].astype(np.float32) for s in ("train", "test")}
    return embedded if (len(embedded["train"]), len(embedded["test"])) == (n_train, n_test) else None


def _own_neighbours(split: str, embedded: dict[str, np.ndarray], y_train: np.ndarray,
                    rows: np.ndarray) -> np.ndarray:
    """(N, k) labels of the nearest training digits of the audited digits `rows` (a training digit's leave itself
    out); -1 in every other row. The training split searches only its top and flagged digits: all 60,000 would
    cost a sixth of a run."""
    near = np.full((len(embedded[split]), evidence.EVIDENCE_K), -1, dtype=np.int64)
    own = rows if split == "train" else None
    idx, _ = neighbours.nearest(embedded["train"], embedded[split][rows], evidence.EVIDENCE_K, own=own)
    near[rows, : idx.shape[1]] = y_train[idx]
    return near


def _neighbours(split: str, table: dict[str, np.ndarray], top: np.ndarray, embedded: dict[str, np.ndarray],
                y_train: np.ndarray) -> dict[str, np.ndarray]:
    """neighbours.csv rows for the audit's top digits: nearest training digits of the given and suggested class."""
    roles = {"given": table["given_label"][top], "suggested": table["suggested_label"][top]}
    return evidence.neighbour_rows(split, np.asarray(top), roles, embedded["train"], y_train, embedded[split][top])


def _pool_with_run(recipe: Recipe, plan: AuditPlan, inv: Invocation, cv_probs: np.ndarray,
                   labels: np.ndarray) -> tuple[np.ndarray, int]:
    """(N, K) mean over every out-of-sample CNN of each digit, and how many run members joined.

    A finished run in the same directory holds M members trained on the training digits only: they
    never saw a test digit, so pooling them steadies the test ranking. The training split has none.
    """
    if plan.split != "test" or not manifest.listed(inv.out, rundir.PROBS_FILE):
        return cv_probs, 0
    with np.load(manifest.verified(inv.out, rundir.PROBS_FILE), allow_pickle=False) as z:
        run_probs, run_labels = z["probs"], z["labels"]
    if run_probs.shape[1:] != cv_probs.shape or not np.array_equal(run_labels, labels):
        return cv_probs, 0
    m = len(run_probs)
    return (cv_probs * recipe.members + run_probs.sum(axis=0)) / (recipe.members + m), m


def resume(split: str, inv: Invocation, log: Log = print) -> dict:
    """Continue the interrupted audit of `split` in inv.out with its own saved recipe and plan."""
    manifest.require(inv.out)
    if not manifest.listed(inv.out, rundir.AUDIT[split].config):
        raise ConfigError(f"--resume: {inv.out} holds no {split}-set audit to resume (no "
                          f"{rundir.AUDIT[split].config}); start one with `audit --out {inv.out}"
                          f"{' --split train' if split == 'train' else ''}`")
    recipe, plan = rundir.load_audit_config(inv.out, split)
    rundir.CLAIMED.add(inv.out)
    return run_audit(recipe, plan, rundir.placed_as_before(inv.out, rundir.AUDIT[split].config, inv), log, resume=True)
