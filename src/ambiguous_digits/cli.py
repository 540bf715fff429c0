"""Command line: `ambiguous-digits run` and friends. Flags are validated here, at the edge.

Each command adds only the flags it uses. Every setting flag defaults to absent
(argparse.SUPPRESS), so a command sees exactly what was typed: the rest comes from
the typed settings' own defaults, or from the run in --out that it follows.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from . import flags
from .config import (BACKENDS, PAD_FIRST, PRECISIONS, SPLITS, AuditPlan, ConfigError, ExperimentPlan, Invocation,
                     RECIPES, Recipe, RunOutputs, start_recipe)
from .data import DataError
from .files import WriteError

PROG = "ambiguous-digits"
RECIPE, OUTPUTS, AUDIT, EXPERIMENT, INVOCATION = Recipe(), RunOutputs(), AuditPlan(), ExperimentPlan(), Invocation()
# CNNs per audit fold: as fast as one run member per fold; on the test split the run's members are pooled in too.
AUDIT_MEMBERS = 1
# Epochs of each experiment variant's first pass: augmentation needs more room than the run's 8.
EXPERIMENT_EPOCHS = 10
# What may go with --resume: where the data are read, where the jobs run and what is shown, never the result.
RESUME_FLAGS = {"resume", "data_dir", "quiet", "split", "backend", "ray_address", "workers"}
FIELDS = {cls: {f.name for f in dataclasses.fields(cls)} for cls in (Recipe, RunOutputs, AuditPlan, ExperimentPlan)}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line, without the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _default(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _by_recipe(knob: str, shown=_default) -> str:
    """A recipe knob's default in the help, read from each measured recipe (RECIPES)."""
    return "the data set's recipe: " + ", ".join(f"{shown(getattr(Recipe(**knobs), knob))} for {name}"
                                                 for name, knobs in RECIPES.items())


# ---------------------------------------------------------------------------
# Flag groups: each command takes the ones it uses
# ---------------------------------------------------------------------------
def _flag(p: argparse.ArgumentParser, *names: str, default=None, help: str, **kw) -> None:
    """A setting flag: absent unless typed; its default named in the help."""
    shown = "" if default is None else f" (default: {_default(default)})"
    p.add_argument(*names, default=argparse.SUPPRESS, help=help + shown, **kw)


def _add_data_flags(p: argparse.ArgumentParser, follows: str = "") -> None:
    r = RECIPE
    _flag(p, "--dataset", type=flags.dataset, default=follows or r.dataset,
          help="mnist, fashion-mnist, idx:DIR (the four IDX files, .gz or not) or npz:FILE "
               "(x_train, y_train, x_test, y_test)")
    _flag(p, "--class-names", type=flags.class_names, help="names of classes 0..K-1: a,b,c or a .json file with a list "
          "(default: the data set's own; 0..K-1 for your own data)")
    _flag(p, "--train-limit", type=flags.positive_int, help="train on the first N images only (smoke tests)")
    _flag(p, "--test-limit", type=flags.positive_int, help="score the first N test images only (smoke tests)")


def _add_training_flags(p: argparse.ArgumentParser, follows: str = "", members: str | None = None,
                        epochs: str | None = None, augment: bool = True) -> None:
    """The recipe's training flags; `members`/`epochs`: their help where the command has its own default
    (members "": no such flag)."""
    r = RECIPE

    def d(value):
        return follows or value
    _flag(p, "--seed", type=int, default=d(r.seed), help="base random seed")
    if members != "":
        _flag(p, "--members", type=flags.positive_int,
              default=None if members else d(_by_recipe("members")),
              help=members or "CNNs in the ensemble, each with its own seed")
    _flag(p, "--epochs", type=flags.positive_int, default=None if epochs else d(_by_recipe("epochs")),
          help=epochs or "training epochs")
    _flag(p, "--batch-size", type=flags.positive_int, default=d(r.batch_size), help="training batch size")
    _flag(p, "--lr", type=float, default=d(r.lr), help="peak learning rate of the one-cycle schedule")
    _flag(p, "--weight-decay", type=float, default=d(r.weight_decay), help="SGD weight decay")
    _flag(p, "--widths", type=flags.widths, default=d(_by_recipe("widths")),
          help="channels of each conv stage, e.g. 16,32,128")
    _flag(p, "--hidden", type=flags.non_negative_int, default=d(r.hidden), metavar="UNITS",
          help="units of a linear-BN-ReLU layer before the output layer (0: none)")
    _flag(p, "--pad-first", type=int, choices=PAD_FIRST, metavar="{0,1}",
          default=d(_by_recipe("pad_first")),
          help="zero padding of the first convolution: 0 leaves its outputs 26 x 26, a fifth less arithmetic")
    if augment:
        p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                       help="random affine augmentation in training "
                            f"(default: {_by_recipe('augment', lambda on: 'on' if on else 'off')})")
    _flag(p, "--precision", choices=PRECISIONS, default=d(r.precision),
          help="bf16 autocast for training (auto: where the hardware has it)")


def _add_invocation_flags(p: argparse.ArgumentParser, backend: bool = True) -> None:
    i = INVOCATION
    _flag(p, "--out", type=Path, default=i.out, help="run directory to write")
    _flag(p, "--force", action="store_true", help="overwrite an existing run directory")
    _flag(p, "--data-dir", type=flags.absolute_path,
          help="cache of a published data set (default: ~/.cache/ambiguous-digits/<dataset>, or under "
               "$XDG_CACHE_HOME where set; for mnist $AMBIGUOUS_DIGITS_DATA when set)")
    _flag(p, "--device", default=i.device, help="auto, cpu, cuda or cuda:N")
    if backend:
        _flag(p, "--threads", type=flags.positive_int,
              help="torch CPU threads of each member and of this process's own stages (default: 1 a member where "
                   "members train side by side, else all cores)")
        _flag(p, "--workers", type=flags.positive_int,
              help="members (audit: fold members) trained at once here, each in a process of its own "
                   "(default: as many as the cores hold at --threads each on a CPU, 1 on a GPU)")
        _flag(p, "--backend", choices=BACKENDS, default=i.backend,
              help="where the ensemble members (audit: folds) train: on this machine (--workers at a time), or as "
                   "Ray tasks of --threads CPUs each (1 unless given; needs pip install '.[ray]')")
        _flag(p, "--ray-address", metavar="HOST:PORT",
              help="with --backend ray: the head node of an existing Ray cluster "
                   "(default: $RAY_ADDRESS, else a Ray started on this machine)")
        _flag(p, "--resume", type=flags.run_dir, metavar="RUN_DIR",
              help="continue an interrupted run in RUN_DIR with its own saved settings "
                   "(only --data-dir, --quiet, --split, --backend, --ray-address and --workers may be given with it; "
                   "its members keep their threads)")
    else:
        _flag(p, "--threads", type=flags.positive_int, help="torch CPU threads (default: all cores)")
    _flag(p, "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Find the most ambiguous (and mislabelled) images in MNIST or another "
                     "28x28 data set.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="fetch the data set (MNIST by default), train, score every test image, "
                         "write the results")
    _add_data_flags(run)
    _add_training_flags(run)
    run.add_argument("--no-cross-fit", dest="cross_fit", action="store_false", default=argparse.SUPPRESS,
                     help="train every member on every training digit (no held-out fold): no label audits or "
                          "training dynamics from the run (`audit` still makes the label audits)")
    _flag(run, "--top", type=flags.positive_int, default=OUTPUTS.top,
          help="images per top-K list (at most the number of test images scored)")
    _flag(run, "--rankings", type=flags.rankings, default=OUTPUTS.rankings,
          help="comma-separated rankings that get a top-K list and a gallery")
    _add_invocation_flags(run)
    aud = sub.add_parser("audit", help="suspected label errors: K-fold cross-validated probabilities ranked by "
                         "cleanlab")
    _add_data_flags(aud, follows="the run's in --out")
    _add_training_flags(aud, follows="the run's in --out, so the fold CNNs train the run's network",
                        members=f"CNNs per fold (default: {AUDIT_MEMBERS})")
    _flag(aud, "--top", type=flags.positive_int, default=AUDIT.top, help="suspected label errors on the contact sheet")
    _flag(aud, "--folds", type=flags.positive_int, default=AUDIT.folds, help="cross-validation folds K")
    _flag(aud, "--split", choices=SPLITS, default=AUDIT.split,
          help="audit the test digits (K-fold over the test set) or the training digits")
    _add_invocation_flags(aud)
    _add_experiment_parser(sub)
    rep = sub.add_parser("report", help="write report.html from a finished run (no retraining)")
    rep.add_argument("run_dir", type=flags.run_dir, help="run directory (from `run`)")
    val = sub.add_parser("validate", help="compare a run's suspected label errors with the human review")
    val.add_argument("run_dir", type=flags.run_dir,
                     help="run directory holding scores.csv (from run) and/or label_issues.csv (from audit)")
    _add_predict(sub)
    _add_clean(sub)
    return parser


def _add_experiment_parser(sub) -> None:
    exp = sub.add_parser("experiment", help="measure augmentation and emphasis on ambiguous training digits "
                         "(needs a finished run in --out: its training-set audit ranks the digits)")
    _add_data_flags(exp, follows="the run's in --out")
    _add_training_flags(exp, follows="the run's in --out, so the variants train its network", members="",
                        epochs=f"epochs of each variant's first pass (default: {EXPERIMENT_EPOCHS})", augment=False)
    e = EXPERIMENT
    _flag(exp, "--seeds", type=flags.positive_int, default=e.seeds, help="seeds (one CNN each) per variant")
    _flag(exp, "--emphasis-top", type=flags.positive_int, default=e.emphasis_top,
          help="most ambiguous training digits the second pass oversamples")
    _flag(exp, "--emphasis-factor", type=flags.positive_int, default=e.emphasis_factor,
          help="times each of them appears in the second pass (at least 2)")
    _flag(exp, "--emphasis-epochs", type=flags.positive_int, default=e.emphasis_epochs, help="epochs of the second pass")
    _add_invocation_flags(exp, backend=False)


def _add_predict(sub) -> None:
    pre = sub.add_parser("predict", help="score your own digit images with a finished run's ensemble")
    pre.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    pre.add_argument("--run", type=flags.run_dir, default=str(INVOCATION.out), metavar="RUN_DIR",
                     help=f"finished run whose ensemble scores the images (default: {INVOCATION.out})")
    pre.add_argument("--out", type=Path, default=None,
                     help="where the preprocessed 28x28 images go (default: RUN_DIR/predictions)")
    pre.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default: cpu)")
    # Default None: predict resolves it to evidence.PREDICT_UNFAMILIAR_PCT, where the constant lives.
    pre.add_argument("--unfamiliar-above", type=float, default=None, metavar="PCT",
                     help="say an image is unlike any training digit, and its prediction not to be trusted, when its "
                          "unfamiliarity is at or above this percentile of the training digits' own (0-100; default: "
                          "evidence.PREDICT_UNFAMILIAR_PCT)")


def _add_clean(sub) -> None:
    cle = sub.add_parser("clean", help="apply a review of the labels to a run's data set and re-measure its "
                         "ensemble (no retraining)")
    cle.add_argument("run_dir", type=flags.run_dir, help="finished run directory (from `run`)")
    cle.add_argument("--review", required=True, metavar="FILE",
                     help="review CSV (split,index,given_label,verdict,new_label,note,reviewed_at; verdict "
                          "correct, relabel or exclude), or 'mturk': the published human review of MNIST's test set")
    cle.add_argument("--out", type=Path, default=None,
                     help="where cleaned.npz and cleaning.json go (default: RUN_DIR/cleaned)")
    cle.add_argument("--force", action="store_true", help="overwrite the files of a non-empty --out")
    cle.add_argument("--data-dir", type=flags.absolute_path, default=None,
                     help="cache of the run's published data set (default: the one the run used)")


# ---------------------------------------------------------------------------
# From the typed flags to the typed settings
# ---------------------------------------------------------------------------
def _given(a: argparse.Namespace, cls) -> dict:
    return {k: v for k, v in vars(a).items() if k in FIELDS[cls]}


def invocation(a: argparse.Namespace) -> Invocation:
    given = {k: v for k, v in vars(a).items() if k in {f.name for f in dataclasses.fields(Invocation)}}
    if getattr(a, "resume", None) is not None:
        given["out"] = a.resume
    return Invocation(**given, progress=not getattr(a, "quiet", False))


def _refuse_with_resume(a: argparse.Namespace) -> None:
    extra = [k for k in vars(a) if k not in RESUME_FLAGS | {"command"}]
    if extra:
        named = {"augment": "--augment" if getattr(a, "augment", True) else "--no-augment", "cross_fit": "--no-cross-fit"}
        flags = ", ".join(named.get(k, "--" + k.replace("_", "-")) for k in extra)
        raise ConfigError(f"--resume: the run continues with the settings saved in {a.resume}; drop {flags}")


def _following(a: argparse.Namespace, **overrides) -> Recipe:
    """The recipe of the run in --out (defaults where there is none), with these overrides and the typed flags."""
    from .rundir import run_recipe

    base = run_recipe(getattr(a, "out", INVOCATION.out)) or start_recipe({"dataset": a.dataset} if "dataset" in a
                                                                         else {})[0]
    return dataclasses.replace(base, **{**overrides, **_given(a, Recipe)})  # a typed flag wins over the override


def _cmd_run(a: argparse.Namespace) -> None:
    from .commands import run  # torch is imported only once the flags are known to be good

    inv = invocation(a)
    if "resume" in a:
        _refuse_with_resume(a)
        summary = run.resume(inv, log=print)
    else:
        recipe, choose = start_recipe(_given(a, Recipe))
        summary = run.run(recipe, RunOutputs(**_given(a, RunOutputs)), inv, log=print, choose=choose)
    top = ", ".join(f"#{t['index']} ({t['label']} \u2192 {t['pred']})" for t in summary["top_ambiguous"][:3])
    print(f"{summary['data']['dataset']}: test accuracy {summary['test_accuracy']:.2%} ({summary['test_errors']} "
          f"errors in {summary['test_digits']} test images), {summary['seconds']['total']:.0f} s; most ambiguous "
          f"(true \u2192 predicted): {top}; results in {inv.out}/ (open {inv.out / 'report.html'})")


def _cmd_audit(a: argparse.Namespace) -> None:
    from .commands import audit

    inv = invocation(a)
    if "resume" in a:
        _refuse_with_resume(a)
        s = audit.resume(getattr(a, "split", AUDIT.split), inv, log=print)
    else:
        recipe = _following(a, members=AUDIT_MEMBERS)
        s = audit.run_audit(recipe, AuditPlan(**_given(a, AuditPlan)), inv, log=print)
    top = ", ".join(f"#{i} ({given} \u2192 {suggested})" for i, (given, suggested) in zip(s["top"][:5], s["top_labels"]))
    print(f"{s['data']['dataset']}, {s['split']} set: cross-validated accuracy {s['cv_accuracy']:.2%}; cleanlab flags "
          f"{s['label_issues_found']} at its default thresholds; most suspect (given \u2192 suggested): {top}; results in "
          f"{inv.out}/")


def _cmd_experiment(a: argparse.Namespace) -> None:
    from .experiment import run_experiment

    inv = invocation(a)
    recipe = _following(a, epochs=EXPERIMENT_EPOCHS)
    r = run_experiment(recipe, ExperimentPlan(**_given(a, ExperimentPlan)), inv, log=print)
    for row in r["variants"].values():
        spread = "" if "of" in row else f" ± {row['accuracy']['std']:.2%} over {len(row['per_seed'])} seed(s)"
        print(f"{row['title']}: test accuracy {row['accuracy']['mean']:.2%}{spread}")
    print(f"{r['leakage']}\nwrote {inv.out / 'experiment.json'} and {inv.out / 'experiment.md'}")


def _cmd_report(a: argparse.Namespace) -> None:
    from .report import write_report
    from .rundir import locked

    with locked(a.run_dir, flag="RUN_DIR"):
        print(f"wrote {write_report(a.run_dir)}")


def _cmd_validate(a: argparse.Namespace) -> None:
    from .commands.validate import run_validate

    v = run_validate(a.run_dir)
    for name, r in v["rankings"].items():
        found = ", ".join(f"top {k}: {r[f'errors_in_top_{k}']}" for k in (10, 20, 50, 100))
        print(f"{name}: of the {len(r['errors'])} label errors human reviewers confirmed, {found}; average "
              f"precision {r['average_precision']:.3f} over the {r['reviewed']} reviewed digits (the ranking "
              f"that chose them: {r['reference']['average_precision']}, top 10: {r['reference']['errors_in_top_10']})")
    print(f"wrote {a.run_dir / 'validation.json'}")


def _cmd_predict(a: argparse.Namespace) -> int:
    """Exit status 1 when any image could not be scored (each named on its own line); 0 otherwise."""
    from .predict import predict_images

    return 1 if predict_images(a.images, a.run, a.out, a.device, unfamiliar_above=a.unfamiliar_above) else 0


def _cmd_clean(a: argparse.Namespace) -> None:
    from .commands.clean import run_clean
    from .rundir import CLEANED_DIR, CLEANED_FILE, CLEANING_FILE

    c = run_clean(a.run_dir, a.review, a.out, a.force, a.data_dir, log=lambda _: None)
    acc, n = c["accuracy"], c["counts"]
    shown = {k: "none left" if r["accuracy"] is None else f"{r['accuracy']:.2%} ({r['errors']} errors in "
             f"{r['digits']} test digits)" for k, r in acc.items() if k != "warning"}
    print(f"test accuracy on the original labels: {shown['original_labels']}")
    print(f"on the corrected labels ({n['test']['relabel']} relabelled, nothing removed): {shown['corrected_labels']}")
    print(f"on the corrected labels without the {acc['corrected_excluded_removed']['removed']} excluded digit(s): "
          f"{shown['corrected_excluded_removed']}")
    print(acc["warning"])
    out = a.out if a.out is not None else a.run_dir / CLEANED_DIR
    print(f"wrote {out / CLEANED_FILE} ({n['train']['kept']} training, {n['test']['kept']} test digits) and "
          f"{out / CLEANING_FILE}; train on it: {PROG} run --dataset npz:{out / CLEANED_FILE}")


COMMANDS = {"run": _cmd_run, "audit": _cmd_audit, "experiment": _cmd_experiment, "report": _cmd_report,
            "validate": _cmd_validate, "predict": _cmd_predict, "clean": _cmd_clean}


# The commands that train, and what lowers their memory: an allocation they cannot make names these.
TRAINING_HINT = ("; lower --widths, --hidden, --batch-size or --epochs (a run cut short resumes with --resume, or "
                 "starts again with --force)")


def out_of_memory(e: BaseException) -> str | None:
    """For an allocation that failed (numpy's MemoryError, torch's allocator on a CPU or a GPU): how much was
    asked for, as " (480.0 GB asked for)" where the message says, else ""; None for any other error."""
    text = str(e)
    if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in text):
        return None
    in_bytes = re.search(r"allocate (\d+) bytes", text)  # torch on a CPU
    if in_bytes:
        return f" ({int(in_bytes.group(1)) / 1e9:,.1f} GB asked for)"
    sized = re.search(r"allocate ([\d.]+ ?[KMGTP]i?B)", text)  # numpy: "Unable to allocate 447. GiB"; CUDA: "20.00 GiB"
    return f" ({sized.group(1)} asked for)" if sized else ""


def resume_hint(a: argparse.Namespace) -> str:
    """For a run or an audit cut short after it claimed its directory: "; `... --resume DIR` continues it"."""
    if a.command not in ("run", "audit"):
        return ""
    from . import manifest, rundir

    out, split = invocation(a).out, getattr(a, "split", AUDIT.split)
    if out not in rundir.CLAIMED:  # stopped before it claimed the folder: what is there is not this command's
        return ""
    try:
        if a.command == "run":
            started = manifest.listed(out, rundir.CONFIG_FILE) and not manifest.listed(out, rundir.SUMMARY_FILE)
        else:
            started = manifest.listed(out, rundir.AUDIT[split].config) and not rundir.audit_finished(out, split)
    except (ConfigError, OSError, ValueError):  # no hint from a directory it cannot read
        return ""
    return f"; `{rundir.resume_command(out, split if a.command == 'audit' else None)}` continues it" if started else ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import rundir

    rundir.CLAIMED.clear()  # one command a call: what an earlier call in this process claimed is not this one's
    try:
        return COMMANDS[args.command](args) or 0
    except (ConfigError, DataError, WriteError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        asked = out_of_memory(e)
        if asked is None:
            raise
        hint = TRAINING_HINT if args.command in ("run", "audit", "experiment") else ""
        print(f"{PROG}: error: out of memory{asked}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted{resume_hint(args)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
