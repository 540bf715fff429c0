"""`run`: check the flags -> load the data -> train the ensemble and score every test image -> write the results."""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Callable

import numpy as np
import torch

from .. import data, evidence, jobs, manifest, members, neighbours, outputs, recipes, report, rundir, scores
from ..config import SPLITS, ConfigError, Invocation, Recipe, RunOutputs, measured_choice
from ..ensemble import MemberPlan, train_members, where
from ..model import describe
from ..train import Precision, Runtime, feature_maps, new_net
from .common import Log, Stages, begin, check_classes, check_limits, environment, load, subset, timed, write_images
from .crossfit import holdout_folds, out_of_sample, write_analysis
from .health import write_health


def check(recipe: Recipe, outputs_: RunOutputs, inv: Invocation) -> None:
    """The flags against the directories, before the data are loaded; writes nothing."""
    outputs_.check_top(recipe.test_digits)
    check_members(recipe, recipe.train_digits)
    rundir.check_out_dir(inv.out, inv.force)


def check_members(recipe: Recipe, train_digits: int | None) -> None:
    """Each cross-fitted member holds out a fold of at least one training digit (None: not known yet)."""
    if recipe.holdout_folds and train_digits is not None and recipe.holdout_folds > train_digits:
        raise ConfigError(f"--members: {recipe.members} cross-fitted members each hold out their own training "
                          f"digits, but there are only {train_digits}; give fewer --members or --no-cross-fit")


def claim(recipe: Recipe, outputs_: RunOutputs, inv: Invocation, ds: data.Dataset, test_images: int,
          choice: dict | None = None) -> None:
    """Once the data are loaded and the directory locked: --top against the images scored, then clear (with
    --force) and claim inv.out, checked again (the load may have taken minutes)."""
    outputs_.check_top(test_images)
    rundir.check_out_dir(inv.out, inv.force)
    with rundir.claiming(inv.out):
        rundir.clear_earlier_run(inv.out)
        rundir.save_run_config(inv.out, recipe, outputs_, inv, choice)
        rundir.CLAIMED.add(inv.out)
    rundir.save_json(inv.out, rundir.DATA_FILE, ds.record())


def run(recipe: Recipe, outputs_: RunOutputs = RunOutputs(), inv: Invocation = Invocation(), log: Log = print,
        resume: bool = False, choose: bool = False) -> dict:
    """Run the whole pipeline into inv.out; returns the summary also written as summary.json.

    With `resume`, the recipe is the run directory's own (rundir.load_run_config): finished members
    are loaded, an interrupted one continues from its last epoch, and the rest is redone. With `choose` (a user's
    data set with no recipe flag typed), the recipe is first chosen on a validation split (recipes.choose).
    """
    if resume and manifest.listed(inv.out, rundir.SUMMARY_FILE):
        log(f"{inv.out} holds a finished run; nothing to resume")
        return json.loads(manifest.verified(inv.out, rundir.SUMMARY_FILE).read_text())
    device, precision = begin(recipe, inv, resume, lambda: check(recipe, outputs_, inv))
    timings: dict[str, float] = {}
    wall = time.perf_counter()
    with timed(timings, "data"):
        ds = load(recipe, inv, log)
        x_train, y_train, x_test, y_test = subset(ds, recipe)
    choice = rundir.recipe_choice(inv.out) if resume else measured_choice(recipe)
    if not resume:
        check_limits(recipe, ds)
        check_classes(recipe, ds, SPLITS if recipe.holdout_folds else ())  # what the run's own audits rank
        check_members(recipe, len(y_train))
        rundir.prepare_out_dir(inv.out, inv.force)
        if choose:
            with timed(timings, "recipe"):
                recipe, choice = recipes.choose(recipe, x_train, y_train, ds.num_classes,
                                                Runtime(device, precision, inv.progress), log)
    with rundir.locked(inv.out):
        if resume:
            rundir.check_resume_data(inv.out, rundir.DATA_FILE, ds)
        else:
            claim(recipe, outputs_, inv, ds, len(y_test), choice)
        folds = holdout_folds(recipe, len(y_train))
        held = (f", each holding out its own 1/{recipe.holdout_folds} of them (cross-fitted)" if folds is not None
                else "")
        log(f"training {recipe.members} CNN(s) on {len(x_train)} {ds.name} images{held}, {ds.num_classes} classes, "
            f"{where(inv, device, precision)}")
        plan = [MemberPlan(rundir.MEMBER_STEM.format(m=m), seed, f"member {m + 1}/{recipe.members}",
                           {"num_classes": ds.num_classes, "fold": m}, y_test,
                           len(y_train) - (0 if folds is None else int((folds == m).sum())),
                           rundir.MODEL_FILE.format(m=m))
                for m, seed in enumerate(recipe.member_seeds())]
        with timed(timings, "train"):
            results = train_members(recipe, inv, plan, jobs.member_job,
                                    {"x_train": x_train, "y_train": y_train, "x_eval": x_test, "folds": folds}, log)
        timings["predict"] = round(sum(r.predict_seconds for r in results), 3)  # inside each member's job
        member_probs = np.stack([r.probs for r in results])
        after = Stages(_stages(folds is not None), inv.progress, log)
        try:
            summary = _after_training(recipe, outputs_, inv, ds, (x_train, y_train, x_test, y_test), folds, results,
                                      member_probs, device, precision, timings, after, choice)
            summary["seconds"] = {**timings, "total": round(time.perf_counter() - wall, 3)}
            rundir.save_json(inv.out, rundir.SUMMARY_FILE, summary)  # listed last: the run is finished
            with after("report"):
                report.write_report(inv.out, dataset=ds)
        finally:
            after.close()
    return summary


def _stages(cross_fitted: bool) -> list[str]:
    """_after_training's stages, in order, then the report's."""
    return ["features", "unfamiliarity", "evidence", *(["health"] if cross_fitted else []), "write",
            *(["audits and dynamics"] if cross_fitted else []), "report"]


def _after_training(recipe: Recipe, outputs_: RunOutputs, inv: Invocation, ds: data.Dataset, arrays: tuple,
                    folds: np.ndarray | None, results, member_probs: np.ndarray, device: torch.device,
                    precision: Precision, timings: dict[str, float], stage: Stages, choice: dict) -> dict:
    """Everything the run writes from its trained members, stage by stage on `stage`'s bar (_stages); the summary
    so far."""
    x_train, y_train, x_test, y_test = arrays
    log = stage.log
    with timed(timings, "scores"):
        table = scores.score_table(member_probs, y_test)
    with stage("features", timings):
        embedded, flat = features_pass(inv.out, results, {"train": x_train, "test": x_test}, device, precision)
    with stage("unfamiliarity", timings):
        turned = partial(turned_maps, inv.out, results, device=device, precision=precision)
        familiar = unfamiliarity_columns(flat, table, x_train, x_test, turned, log)
    with stage("evidence", timings):
        near = write_evidence(inv.out, embedded, member_probs, y_train, table, ds.class_names, precision.autocast,
                              familiar)
    health_part, train_columns = None, None
    if folds is not None:
        oos = {"train": out_of_sample(results, folds, ds.num_classes), "test": member_probs.mean(axis=0)}
        with stage("health", timings):
            columns, health_part = write_health(inv.out, arrays, embedded, oos, ds.class_names, recipe.seed,
                                                torch.get_num_threads(), log)
            table.update(columns["test"])
            train_columns = columns["train"]
    with stage("write", timings):
        rundir.save_npz(inv.out, rundir.PROBS_FILE, probs=member_probs.astype(np.float32), labels=y_test,
                        index=np.arange(len(y_test)), seeds=np.array([r.seed for r in results], dtype=np.uint64))
        tops = write_results(inv.out, outputs_, x_test, table, ds.class_names)
        write_neighbours(inv.out, tops, table, embedded, y_train)
    summary = _summary(recipe, outputs_, inv, ds, results, table, tops, device, precision)
    summary["recipe_choice"] = choice
    if folds is not None:
        with stage("audits and dynamics"):
            summary["cross_fit"] = write_analysis(inv.out, recipe, ds.record(), arrays, results, oos, folds,
                                                  embedded, near, ds.class_names, log, train_columns)
        timings.update(summary["cross_fit"].pop("seconds"))
        summary["health"] = health_part
        timings.update({f"health_{k}": v for k, v in health_part.pop("seconds").items()})
    else:
        log("no label audits, training dynamics or health: they need --members >= 2, cross-fitted (see `audit`)")
    return summary


def write_results(out, outputs_: RunOutputs, x_test: np.ndarray, table: dict[str, np.ndarray],
                  class_names: tuple[str, ...]) -> dict[str, list[int]]:
    """scores.csv, imgs/<index>.png for every image in a top-K list, one contact sheet per chosen ranking."""
    outputs.write_table(out / rundir.SCORES_FILE, table)
    written, tops = [out / rundir.SCORES_FILE], {}
    for name in outputs_.rankings:
        rows = scores.top_indices(table[f"rank_{name}"], outputs_.top)
        tops[name] = [int(table["index"][r]) for r in rows]
        written += write_images(out, rundir.IMAGES_DIR, x_test, rows)
        titles = [f"#{table['index'][r]}: true {class_names[table['label'][r]]}, "
                  f"pred {class_names[table['pred'][r]]}\n"
                  f"p={table['prob_pred'][r]:.3f}" for r in rows]
        outputs.contact_sheet(out / rundir.sheet_file(name), x_test[rows], titles,
                              f"Top {len(rows)} by {name.replace('_', '-')}")
        written.append(out / rundir.sheet_file(name))
    manifest.record(out, *written)
    return tops


def features_pass(out, results, sets: dict[str, np.ndarray], device: torch.device, precision: Precision,
                  pooled: tuple[str, ...] = ("train", "test")) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every member's last-stage maps of each set of images, in one pass after training (on the driver, whatever
    the backend): for the sets named in `pooled` the features averaged over space (evidence.POOLING), and for every
    set the maps flattened (unfamiliarity's), each pooled over the members (float32, row i = image i of its set)."""
    means: dict[str, list] = {name: [] for name in pooled}
    flat: dict[str, np.ndarray] = {}
    for m, r in enumerate(results):  # a member finished before a --resume comes back without its CNN
        model = (r.model if r.model is not None else members.load_model(out, rundir.MODEL_FILE.format(m=m))).to(device)
        for name, x in sets.items():
            chunks, start = [], 0
            for maps in feature_maps(model, x, device, precision=precision):  # reduced a chunk at a time: in cache
                if name in means:
                    chunks.append(maps.mean(axis=(2, 3)))
                rows = maps.reshape(len(maps), -1)
                if name not in flat:
                    flat[name] = np.zeros((len(x), rows.shape[1]), dtype=np.float32)
                flat[name][start : start + len(rows)] += neighbours.unit(rows) / len(results)
                start += len(rows)
            if name in means:
                means[name].append(np.concatenate(chunks))
    return {name: evidence.pool(f) for name, f in means.items()}, flat


def turned_maps(out, results, images: np.ndarray, device: torch.device, precision: Precision) -> np.ndarray:
    """(N, d) the members' flattened maps of `images` turned (evidence.turned's order: N = len(TURNS) x images)."""
    return features_pass(out, results, {"turned": evidence.turned(images)}, device, precision, pooled=())[1]["turned"]


def unfamiliarity_columns(flat: dict[str, np.ndarray], table: dict[str, np.ndarray], x_train: np.ndarray,
                          x_test: np.ndarray, turned: Callable[[np.ndarray], np.ndarray],
                          log: Log) -> dict[str, np.ndarray]:
    """The table's unfamiliarity columns, in evidence.Layout fitted on the training digits' pooled flattened
    maps (`flat`, from features_pass), each digit also looked at turned (evidence.upright) where the training
    digits have an upright (evidence.has_upright, on the calibration sample's check_rows); of the rest of the
    sample, only those within_reach of the line are turned. `turned` (turned_maps) gives images' maps turned.
    Returns what embeddings.npz keeps of it."""
    layout = evidence.Layout.fit(flat["train"])
    train, test = layout(flat["train"]), layout(flat["test"])
    sample = evidence.calibration_rows(len(train))
    own = evidence.own_unfamiliarity(train, sample)

    def own_upright(at: np.ndarray) -> np.ndarray:  # the sample's digits at these positions, turned (own_turned)
        if not len(at):  # a small sample is checked whole: none left to reach
            return np.zeros(0, dtype=np.float32)
        return evidence.own_turned(train, sample[at], layout(turned(x_train[sample[at]])))

    check = evidence.check_rows(len(sample))
    checked = own_upright(check)
    share = evidence.more_familiar_turned(own[check], checked)
    upright = evidence.has_upright(share)
    log(f"unfamiliarity: {share:.1%} of {len(check):,} sampled training images are more familiar turned a quarter "
        + ("turn: each image is also looked at turned" if upright else
           f"turn (over {evidence.UPRIGHT_SHARE:.0%}): no upright to check, images are scored as given"))
    table["unfamiliarity"] = evidence.unfamiliarity(train, test)
    kept = {"turned_more_familiar": np.array(share)}
    if upright:
        reach = np.setdiff1d(np.flatnonzero(evidence.within_reach(own)), check)
        reached = own_upright(reach)
        own[check], own[reach] = evidence.upright(own[check], checked), evidence.upright(own[reach], reached)
        table["unfamiliarity"] = evidence.upright(table["unfamiliarity"],
                                                  evidence.unfamiliarity(train, layout(turned(x_test))))
        kept["unfamiliarity_turns"] = np.array(evidence.TURNS)
    table["unfamiliarity_pct"] = evidence.percentile_of(table["unfamiliarity"], own)
    return {"layout_train": train.astype(np.float16), "layout_basis": layout.basis, "calibration_index": sample,
            "calibration_unfamiliarity": own.astype(np.float32), **kept}


def write_evidence(out, embedded: dict[str, np.ndarray], member_probs: np.ndarray, y_train: np.ndarray,
                   table: dict[str, np.ndarray], names: tuple[str, ...], bf16: bool,
                   familiar: dict[str, np.ndarray]) -> np.ndarray:
    """embeddings.npz (the members' pooled features of every digit, and `familiar`: unfamiliarity's embedding of
    the training digits, its basis, and a sample of their own unfamiliarity, the percentiles' reference; `bf16`:
    whether the features pass ran under autocast, as `predict` runs it through torch), and the table's reasons
    column; returns each test digit's nearest training digits' labels (N, k)."""
    near = evidence.near_labels(embedded["train"], y_train, embedded["test"])
    table["reasons"] = np.array(evidence.reasons(member_probs, table["label"], near, table["unfamiliarity_pct"],
                                                 names))
    rundir.save_npz(out, rundir.EMBEDDINGS_FILE, train=embedded["train"].astype(np.float16),
                    test=embedded["test"].astype(np.float16), pooling=np.array(evidence.POOLING),
                    features_bf16=np.array(bf16), **familiar)
    return near


def write_neighbours(out, tops: dict[str, list[int]], table: dict[str, np.ndarray], embedded: dict[str, np.ndarray],
                     y_train: np.ndarray) -> None:
    """neighbours.csv: for every test digit in a top-K list, its nearest training digits of its given
    label and of its predicted class."""
    rows = np.array(sorted({i for listed in tops.values() for i in listed}), dtype=np.int64)
    found = evidence.neighbour_rows("test", rows, {"given": table["label"][rows], "predicted": table["pred"][rows]},
                                    embedded["train"], y_train, embedded["test"][rows])
    outputs.write_table(out / rundir.NEIGHBOURS_FILE, found)
    manifest.record(out, out / rundir.NEIGHBOURS_FILE)


def _summary(recipe: Recipe, outputs_: RunOutputs, inv: Invocation, ds: data.Dataset, results, table, tops,
             device, precision) -> dict:
    labels = table["label"]
    member_acc = [float((r.probs.argmax(1) == labels).mean()) for r in results]
    errors = int((table["pred"] != labels).sum())
    return {
        "test_accuracy": 1 - errors / len(labels),
        "test_errors": errors,
        "test_digits": len(labels),
        "train_digits": len(ds.y_train[:recipe.train_limit]),
        "member_accuracy": member_acc,
        "member_accuracy_mean": float(np.mean(member_acc)),
        "member_accuracy_std": float(np.std(member_acc)),
        "members": recipe.members,
        "member_seeds": [r.seed for r in results],
        "model": describe(new_net(recipe, ds.num_classes)),
        "history": [r.history for r in results],
        "top": tops,
        "top_ambiguous": [{"index": int(i), "label": ds.class_names[table["label"][i]],
                           "pred": ds.class_names[table["pred"][i]]}
                          for i in scores.top_indices(table["rank_ambiguity"], outputs_.top)],  # whatever --rankings
        "data": ds.record(),
        "environment": environment(device, precision),
        "backend": inv.backend,
        "run_id": rundir.run_id(inv.out),
        "recipe": recipe.to_json(),
        "outputs": {"top": outputs_.top, "rankings": list(outputs_.rankings)},
        "invocation": inv.to_json(),
    }


def resume(inv: Invocation, log: Log = print) -> dict:
    """Continue the interrupted run in inv.out with its own saved recipe, on the device, threads and workers it
    started with."""
    recipe, outputs_ = rundir.load_run_config(inv.out)
    rundir.CLAIMED.add(inv.out)
    return run(recipe, outputs_, rundir.placed_as_before(inv.out, rundir.CONFIG_FILE, inv), log, resume=True)
