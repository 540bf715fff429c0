"""Command line: `ambiguous-digits run` and friends. Flags are validated here, at the edge."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .config import BACKENDS, NORM_STATS, PUBLISHED_DATASETS, RANKING_NAMES, USER_FORMATS, Config, ConfigError
from .data import DataError
from .files import WriteError
from .manifest import MANIFEST_FILE

PROG = "ambiguous-digits"
DEFAULTS = Config()
# CNNs per audit fold. One keeps the audit as fast as one `run` member per fold; on
# the test split the run's own ensemble is pooled in as well (pipeline._pool_with_run).
AUDIT_MEMBERS = 1
# Suspected label errors per audit contact sheet (its --top): a page of them to look at.
AUDIT_TOP = 30
# Run flags that `audit` does not use: it ranks by cleanlab's label quality alone.
NOT_FOR_AUDIT = {"rankings": "--rankings"}
# Epochs of each experiment variant's first pass, against the run's 8: augmentation needs room.
# (With the earlier 32/64/128 network: 4-epoch members reached 99.51% ± 0.06%, one augmented
# model trained 10 epochs 99.54%, one seed, 162 s on 2 threads.)
EXPERIMENT_EPOCHS = 10
# Run flags that `experiment` does not use: each variant trains one CNN per seed and
# sets augmentation itself. Passing one is an error rather than silently ignored.
NOT_FOR_EXPERIMENT = {"members": "--members", "augment": "--no-augment", "top": "--top",
                      "rankings": "--rankings"}


class _Help(argparse.HelpFormatter):
    """Each flag's default appended to its help, as the user would type it (16,32,128), and only where
    it says something: not for on/off switches, nor where the help already names the default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        value = action.default
        if (not action.option_strings or value in (None, argparse.SUPPRESS) or "default" in text
                or action.nargs == 0):  # a switch (store_true/false) takes no value: its default says nothing
            return text
        if isinstance(value, (tuple, list)):
            value = ",".join(map(str, value))
        return f"{text} (default: {str(value).replace('%', '%%')})"


def _hide(parser: argparse.ArgumentParser, dests) -> None:
    """Keep flags a command refuses out of its --help (they still parse, to be refused by name)."""
    for action in parser._actions:
        if action.dest in dests:
            action.help = argparse.SUPPRESS


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line, without the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _absolute_path(text: str) -> Path:
    """A path made absolute as typed, so the run records where it is wherever `report` later runs from."""
    return Path(text).expanduser().absolute()


def _int_flag(text: str, zero_ok: bool) -> int:
    """A positive integer (or 0 as well, where zero_ok); argparse's one-line error otherwise."""
    kind, bound = ("0 or a positive integer", "0 or positive") if zero_ok else ("a positive integer", "positive")
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if value < (0 if zero_ok else 1):
        raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_flag(text, zero_ok=False)


def _non_negative_int(text: str) -> int:
    return _int_flag(text, zero_ok=True)


def _widths(text: str) -> tuple[int, ...]:
    return tuple(_positive_int(part) for part in text.split(","))


def _dataset(text: str) -> str:
    """A --dataset value; a user file's path is made absolute, so `report` finds it from anywhere."""
    fmt, sep, path = text.partition(":")
    if text in PUBLISHED_DATASETS:
        return text
    if not (sep and fmt in USER_FORMATS and path):
        raise argparse.ArgumentTypeError(f"expected {', '.join(PUBLISHED_DATASETS)}, idx:DIR or npz:FILE, got {text!r}")
    return f"{fmt}:{Path(path).expanduser().resolve()}"


def _class_names(text: str) -> tuple[str, ...]:
    """'a,b,c', or a JSON file (name ending .json) holding a list of names."""
    if not text.endswith(".json"):
        return tuple(name.strip() for name in text.split(","))
    try:
        names = json.loads(Path(text).read_text())
    except (OSError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"cannot read {text} ({e})") from None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise argparse.ArgumentTypeError(f"{text}: expected a JSON list of names, e.g. [\"cat\", \"dog\"]")
    return tuple(names)


def _rankings(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",")))  # in order, once each
    unknown = [n for n in names if n not in RANKING_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown ranking {', '.join(map(repr, unknown))}; "
                                         f"choose from {', '.join(RANKING_NAMES)}")
    return names


def _run_dir(text: str) -> Path:
    """A directory written by `run` or `audit` (it has a manifest.json)."""
    path = Path(text)
    try:
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{text} does not exist")
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is not a directory")
        if not (path / MANIFEST_FILE).is_file():
            raise argparse.ArgumentTypeError(f"{text} is not a run directory (no {MANIFEST_FILE})")
    except OSError as e:  # a directory we may not look into
        raise argparse.ArgumentTypeError(f"cannot read {text}: {e.strerror or e}") from None
    return path


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--out", type=Path, default=d.out, help="run directory to write")
    p.add_argument("--dataset", type=_dataset, default=d.dataset,
                   help="mnist, fashion-mnist, idx:DIR (the four IDX files, .gz or not) or npz:FILE "
                        "(x_train, y_train, x_test, y_test)")
    p.add_argument("--class-names", type=_class_names, default=None,
                   help="names of classes 0..K-1: a,b,c or a .json file with a list (default: the data set's own; "
                        "0..K-1 for your own data)")
    p.add_argument("--data-dir", type=_absolute_path, default=None,
                   help="cache of a published data set (default: ~/.cache/ambiguous-digits/<dataset>, or under "
                        "$XDG_CACHE_HOME where set; "
                        "for mnist $AMBIGUOUS_DIGITS_DATA when set)")
    p.add_argument("--seed", type=int, default=d.seed, help="base random seed")
    p.add_argument("--members", type=_positive_int, default=d.members, help="CNNs in the ensemble, each with its own seed")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs, help="training epochs")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="training batch size")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay")
    p.add_argument("--widths", type=_widths, default=d.widths, help="channels of each conv stage, e.g. 16,32,128")
    p.add_argument("--norm-before-pool", dest="pool_first", action="store_false",
                   help="each stage's batch norm before its max-pool, the stage order of runs before version 0.2 "
                        "(default: max-pool, then batch norm)")
    p.add_argument("--hidden", type=_non_negative_int, default=d.hidden, metavar="UNITS",
                   help="units of a linear-BN-ReLU layer before the output layer (0: none)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="train without random affine augmentation")
    p.add_argument("--norm-stats", choices=NORM_STATS, default=d.norm_stats,
                   help="after augmented training, the batch norms' statistics: clean (every norm but the first "
                        "recomputes them over the un-augmented training images) or running (the averages kept "
                        "during training, as before version 0.5)")
    p.add_argument("--top", type=_positive_int, default=d.top,
                   help="images per top-K list (at most the number of test images scored; audit: on its contact sheet)")
    p.add_argument("--rankings", type=_rankings, default=",".join(d.rankings),
                   help="comma-separated rankings that get a top-K list and a gallery")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default=d.precision, choices=("auto", "bf16", "fp32"),
                   help="bf16 autocast for training (auto: where the hardware has it)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--train-limit", type=_positive_int, default=None, help="train on the first N images only (smoke tests)")
    p.add_argument("--test-limit", type=_positive_int, default=None, help="score the first N test images only (smoke tests)")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend,
                   help="where the ensemble members (audit: folds) train: one after another here, or as Ray "
                        "tasks of --threads CPUs each (1 unless given; needs pip install '.[ray]')")
    p.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="with --backend ray: the head node of an existing Ray cluster "
                        "(default: $RAY_ADDRESS, else a Ray started on this machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--resume", type=_run_dir, default=None, metavar="RUN_DIR",
                   help="continue an interrupted run in RUN_DIR with its own saved settings "
                        "(only --data-dir, --quiet, --split, --backend and --ray-address may be given with it)")


def build_parser(unset: object | None = None) -> argparse.ArgumentParser:
    """The command line; with `unset`, every run/audit flag defaults to it (to see which were given)."""
    parser = _Parser(prog=PROG, description="Find the most ambiguous (and mislabelled) images in MNIST or another 28x28 data set.",
                     formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="fetch the data set (MNIST by default), train, score every test image, write the results",
                         formatter_class=_Help)
    _add_run_flags(run)
    aud = sub.add_parser("audit", help="suspected label errors: K-fold cross-validated probabilities ranked by cleanlab",
                         formatter_class=_Help)
    _add_run_flags(aud)
    aud.set_defaults(members=AUDIT_MEMBERS, top=AUDIT_TOP, widths=None, pool_first=None, hidden=None, norm_stats=None,
                     **{key: None for key in NOT_FOR_AUDIT})
    _hide(aud, NOT_FOR_AUDIT)
    _follow_the_run(aud, "the fold CNNs train the run's network")
    aud.add_argument("--folds", type=_positive_int, default=DEFAULTS.folds, help="cross-validation folds K")
    aud.add_argument("--split", choices=("test", "train"), default=DEFAULTS.split,
                     help="audit the test digits (K-fold over the test set) or the training digits")
    _add_experiment_parser(sub)
    rep = sub.add_parser("report", help="write report.html from a finished run (no retraining)")
    rep.add_argument("run_dir", type=_run_dir, help="run directory (from `run`)")
    val = sub.add_parser("validate", help="compare a run's suspected label errors with the human review")
    val.add_argument("run_dir", type=_run_dir,
                     help="run directory holding scores.csv (from run) and/or label_issues.csv (from audit)")
    _add_predict(sub)
    if unset is not None:
        for p in (run, aud):
            p.set_defaults(**{a.dest: unset for a in p._actions if a.dest != "help"})
    return parser


def _add_experiment_parser(sub) -> None:
    exp = sub.add_parser("experiment", help="measure augmentation and emphasis on ambiguous training digits "
                         "(needs a finished run and `audit --split train` in --out)",
                         formatter_class=_Help)
    _add_run_flags(exp)
    exp.set_defaults(epochs=EXPERIMENT_EPOCHS, backend=None, widths=None, pool_first=None, hidden=None, norm_stats=None,
                     **{key: None for key in NOT_FOR_EXPERIMENT})
    _hide(exp, {*NOT_FOR_EXPERIMENT, "backend", "ray_address", "resume"})
    _follow_the_run(exp, "the variants train its network")
    d = DEFAULTS
    exp.add_argument("--seeds", type=_positive_int, default=d.seeds, help="seeds (one CNN each) per variant")
    exp.add_argument("--emphasis-top", type=_positive_int, default=d.emphasis_top,
                     help="most ambiguous training digits the second pass oversamples")
    exp.add_argument("--emphasis-factor", type=_positive_int, default=d.emphasis_factor,
                     help="times each of them appears in the second pass (at least 2)")
    exp.add_argument("--emphasis-epochs", type=_positive_int, default=d.emphasis_epochs,
                     help="epochs of the second pass")


def _follow_the_run(parser: argparse.ArgumentParser, why: str) -> None:
    """--widths, --norm-before-pool, --hidden and --norm-stats of a command that defaults to the network of the
    run in --out."""
    for action in parser._actions:
        if action.dest == "widths":
            action.help = f"channels of each conv stage (default: the run's in --out, so {why}; else " \
                          f"{','.join(map(str, DEFAULTS.widths))})"
        if action.dest == "pool_first":
            action.help = "each stage's batch norm before its max-pool (default: the run's stage order in --out; " \
                          "else max-pool, then batch norm)"
        if action.dest == "hidden":
            action.help = f"units of a linear-BN-ReLU layer before the output layer, 0 for none (default: the " \
                          f"run's in --out; else {DEFAULTS.hidden})"
        if action.dest == "norm_stats":
            action.help = f"after augmented training, the batch norms' statistics: clean or running (default: the " \
                          f"run's in --out; else {DEFAULTS.norm_stats})"


def _with_the_runs_network(a: argparse.Namespace) -> dict:
    """widths, pool_first, hidden and norm_stats: as given, else those of the run in --out (see _run_config)."""
    run = _run_config(a.out)
    return {"widths": a.widths or run.widths, "pool_first": run.pool_first if a.pool_first is None else a.pool_first,
            "hidden": run.hidden if a.hidden is None else a.hidden,
            "norm_stats": a.norm_stats or run.norm_stats}


def _experiment_args(a: argparse.Namespace) -> tuple[argparse.Namespace, dict]:
    """The namespace with the unused run flags at their defaults, and the experiment's own settings.

    A run flag the experiment does not use is refused, not silently ignored.
    """
    if a.resume is not None:
        raise ConfigError("--resume: experiment cannot resume; rerun it (its inputs, the run and the train audit, "
                          "are kept)")
    for key, flag in NOT_FOR_EXPERIMENT.items():
        if getattr(a, key) is not None:
            raise ConfigError(f"{flag}: not used by experiment (each variant trains one CNN per seed, "
                              f"with augmentation as the variant says)")
    if a.backend is not None:
        raise ConfigError("--backend: not used by experiment (its variants train in this process)")
    a = argparse.Namespace(**{**vars(a), **{key: getattr(DEFAULTS, key) for key in NOT_FOR_EXPERIMENT},
                              "backend": DEFAULTS.backend, **_with_the_runs_network(a)})
    return a, {"seeds": a.seeds, "emphasis_top": a.emphasis_top, "emphasis_factor": a.emphasis_factor,
               "emphasis_epochs": a.emphasis_epochs}


def _run_config(run_dir: Path) -> Config:
    """The config of the run in run_dir, whose network (widths, pool_first, hidden, norm_stats) an audit's fold
    CNNs and the experiment's variants train unless --widths, --norm-before-pool, --hidden or --norm-stats say
    otherwise (an audit pools its CNNs with the run's members); the defaults where there is no readable run (an
    audit then pools with nothing; the experiment says why it stops)."""
    from .pipeline import load_config

    try:
        return load_config(run_dir)
    except (ConfigError, OSError):
        return DEFAULTS


def _add_predict(sub) -> None:
    pre = sub.add_parser("predict", help="score your own digit images with a finished run's ensemble",
                         formatter_class=_Help)
    pre.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    pre.add_argument("--run", type=_run_dir, default=str(DEFAULTS.out), metavar="RUN_DIR",
                     help="finished run whose ensemble scores the images")
    pre.add_argument("--out", type=Path, default=None,
                     help="where the preprocessed 28x28 images go (default: RUN_DIR/predictions)")
    pre.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")


def _audit_args(a: argparse.Namespace) -> tuple[argparse.Namespace, dict]:
    """The namespace with the run flags audit does not use at their defaults (refused when given)."""
    for key, flag in NOT_FOR_AUDIT.items():
        if getattr(a, key) is not None:
            raise ConfigError(f"{flag}: not used by audit (it ranks by cleanlab's label quality)")
    a = argparse.Namespace(**{**vars(a), **{key: getattr(DEFAULTS, key) for key in NOT_FOR_AUDIT},
                              **_with_the_runs_network(a)})
    return a, {"folds": a.folds, "split": a.split}


def config_from_args(a: argparse.Namespace) -> Config:
    extra = {}
    if a.command == "audit":
        a, extra = _audit_args(a)
    if a.command == "experiment":
        a, extra = _experiment_args(a)
    return Config(**extra, out=a.out, dataset=a.dataset, class_names=a.class_names, data_dir=a.data_dir, seed=a.seed, epochs=a.epochs, batch_size=a.batch_size,
                  members=a.members, lr=a.lr, weight_decay=a.weight_decay, widths=a.widths, pool_first=a.pool_first, hidden=a.hidden, augment=a.augment, norm_stats=a.norm_stats, top=a.top,
                  rankings=a.rankings, device=a.device, precision=a.precision, threads=a.threads,
                  train_limit=a.train_limit, test_limit=a.test_limit, force=a.force, backend=a.backend,
                  ray_address=a.ray_address)


# Flags that may go with --resume: they change where data is read, where the jobs run
# (the backends give the same result) and what is shown, not the result.
RESUME_FLAGS = {"resume", "data_dir", "quiet", "split", "backend", "ray_address"}


def resume_config(a: argparse.Namespace, argv: list[str] | None) -> Config:
    """RUN_DIR's saved config for --resume; refuses flags that would change its result."""
    from .pipeline import AUDIT_FILES, CONFIG_FILE, load_config

    given = build_parser(unset=_UNSET).parse_args(argv)
    extra = [k for k, v in vars(given).items() if v is not _UNSET and k not in RESUME_FLAGS | {"command"}]
    if extra:
        flags = ", ".join(_flag_name(a.command, k) for k in extra)
        raise ConfigError(f"--resume: the run continues with the settings saved in {a.resume}; drop {flags}")
    name = AUDIT_FILES[a.split][5] if a.command == "audit" else CONFIG_FILE
    cfg = load_config(a.resume, name)
    where = {k: getattr(a, k) for k in ("data_dir", "backend", "ray_address") if getattr(given, k) is not _UNSET}
    if where.get("backend", cfg.backend) == "local":  # a Ray run resumed here: its address no longer applies
        where.setdefault("ray_address", None)
    return dataclasses.replace(cfg, **where)


_UNSET = object()


def _flag_name(command: str, dest: str) -> str:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return next(a.option_strings[0] for a in sub._actions if a.dest == dest)


def _cmd_run(a: argparse.Namespace, argv: list[str] | None) -> None:
    from .pipeline import run  # torch is imported only once the flags are known to be good

    cfg = resume_config(a, argv) if a.resume else config_from_args(a)
    summary = run(cfg, log=print, progress=not a.quiet, resume=a.resume is not None)
    top = ", ".join(f"#{t['index']} ({t['label']} \u2192 {t['pred']})" for t in summary["top_ambiguous"][:3])
    print(f"{summary['data']['dataset']}: test accuracy {summary['test_accuracy']:.2%} ({summary['test_errors']} "
          f"errors in {summary['test_digits']} test images), {summary['seconds']['total']:.0f} s; most ambiguous "
          f"(true \u2192 predicted): {top}; results in {cfg.out}/ (open {cfg.out / 'report.html'})")


def _cmd_audit(a: argparse.Namespace, argv: list[str] | None) -> None:
    from .pipeline import run_audit

    cfg = resume_config(a, argv) if a.resume else config_from_args(a)
    s = run_audit(cfg, log=print, progress=not a.quiet, resume=a.resume is not None)
    top = ", ".join(f"#{i} ({given} \u2192 {suggested})" for i, (given, suggested) in zip(s["top"][:5], s["top_labels"]))
    print(f"{s['data']['dataset']}, {s['split']} set: cross-validated accuracy {s['cv_accuracy']:.2%}; cleanlab flags "
          f"{s['label_issues_found']} label issues; most suspect (given \u2192 suggested): {top}; results in {cfg.out}/")


def _cmd_experiment(a: argparse.Namespace, argv) -> None:
    from .experiment import run_experiment

    cfg = config_from_args(a)
    r = run_experiment(cfg, log=print, progress=not a.quiet)
    for row in r["variants"].values():
        spread = "" if "of" in row else f" ± {row['accuracy']['std']:.2%} over {len(row['per_seed'])} seed(s)"
        print(f"{row['title']}: test accuracy {row['accuracy']['mean']:.2%}{spread}")
    print(f"{r['leakage']}\nwrote {cfg.out / 'experiment.json'} and {cfg.out / 'experiment.md'}")


def _cmd_report(a: argparse.Namespace, argv) -> None:
    from .report import write_report

    print(f"wrote {write_report(a.run_dir)}")


def _cmd_validate(a: argparse.Namespace, argv) -> None:
    from .pipeline import run_validate

    v = run_validate(a.run_dir)
    for name, r in v["rankings"].items():
        found = ", ".join(f"top {k}: {r[f'errors_in_top_{k}']}" for k in (10, 20, 50, 100))
        print(f"{name}: of the {len(r['errors'])} label errors human reviewers confirmed, {found}; average "
              f"precision {r['average_precision']:.3f} over the {r['reviewed']} reviewed digits (the ranking "
              f"that chose them: {r['reference']['average_precision']}, top 10: {r['reference']['errors_in_top_10']})")
    print(f"wrote {a.run_dir / 'validation.json'}")


def _cmd_predict(a: argparse.Namespace, argv) -> int:
    """Exit status 1 when any image could not be scored (each named on its own line); 0 otherwise."""
    from .predict import predict_images

    failures = predict_images(a.images, a.run, a.out, a.device)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"run": _cmd_run, "audit": _cmd_audit, "experiment": _cmd_experiment, "report": _cmd_report,
                "validate": _cmd_validate,
                "predict": _cmd_predict}
    try:
        return commands[args.command](args, argv) or 0
    except (ConfigError, DataError, WriteError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
