"""The report's prose: the original analysis's three questions, answered from one run's numbers.

Every function takes the run's facts (report.run_facts) and the data set's noun,
"digit" or "image" (report.noun picks it), and returns sentences; the noun is
written into each sentence as it is built. No files, no pictures.
"""

from __future__ import annotations

from . import scores, validate

# The accuracy of the original analysis this tool grew out of, on MNIST.
ORIGINAL_ACCURACY = 0.992


def pct(x: float) -> str:
    """A fraction as a percentage with two decimals: 0.9966 -> '99.66%'."""
    return f"{x:.2%}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _points(x: float) -> str:
    return f"{100 * x:.2f} percentage points"


def answers(f: dict, noun: str) -> list[dict]:
    """[{question, paragraphs}] in the original analysis's order; every number is this run's."""
    return [{"question": "Describe your model", "paragraphs": describe_model(f, noun)},
            {"question": "Analyse your results", "paragraphs": analyse_results(f, noun)},
            {"question": "Impact of the images and improvements", "paragraphs": impact(f, noun)}]


# ---------------------------------------------------------------------------
# Describe your model
# ---------------------------------------------------------------------------
def describe_model(f: dict, noun: str) -> list[str]:
    s, c = f["summary"], f["summary"]["recipe"]
    limited = f" (the first {s['train_digits']:,} only)" if c.get("train_limit") else ""
    who = ("One convolutional network" if f["members"] == 1 else
           f"An ensemble of {f['members']} convolutional networks, each trained from its own seed; "
           f"its prediction is the mean of their softmax probabilities. Each network is")
    size = ""
    if f["parameters"] and f["members"] > 1:
        total = f["members"] * int(f["parameters"].replace(",", ""))
        size = f" The ensemble holds {f['members']} × {f['parameters']} = {total:,} parameters."
    return [
        f"{who}: {s['model']}.{size} The network returns logits; softmax is applied once, when probabilities "
        f"are computed.",
        f"Training: {_plural(c['epochs'], 'epoch')} over {s['train_digits']:,} training {noun}s{limited}, SGD "
        f"with Nesterov momentum and a one-cycle learning rate peaking at {c['lr']}, weight decay "
        f"{c['weight_decay']}, batches of {c['batch_size']}, {'with' if c['augment'] else 'without'} random "
        f"affine augmentation{norm_stats_clause(c['augment'], noun)}, and no label "
        f"smoothing, so the probabilities keep their confidence signal. Training took "
        f"{s['seconds']['train']:.1f} s on {s['environment']['device']}.",
    ]


def norm_stats_clause(augment: bool, noun: str) -> str:
    """Where the batch norms' statistics come from: recomputed on clean images after augmented
    training; without augmentation training's own averages are already those, so nothing is said."""
    if not augment:
        return ""
    return (" (after training, every batch norm but the first recomputed its statistics over the "
            f"un-augmented training {noun}s)")


# ---------------------------------------------------------------------------
# Analyse your results
# ---------------------------------------------------------------------------
def analyse_results(f: dict, noun: str) -> list[str]:
    s = f["summary"]
    scored = f"{f['n']:,} test {noun}s" + (" (a --test-limit subset)" if s["recipe"]["test_limit"] else "")
    first = f"The ensemble classifies {pct(f['accuracy'])} of the {scored} correctly: {f['errors']} errors."
    if f["members"] > 1:
        gain = f["accuracy"] - f["member_mean"]
        first += (f" Its members alone score {pct(f['member_mean'])} ± {pct(f['member_std'])} (mean ± std over "
                  f"{f['members']} seeds, {pct(min(f['member_accuracy']))} to {pct(max(f['member_accuracy']))}), "
                  f"so averaging them {'adds' if gain >= 0 else 'costs'} {_points(abs(gain))}.")
    gap = f["accuracy"] - ORIGINAL_ACCURACY
    if f["dataset"] == "mnist":  # the original analysis was of MNIST only
        first += (f" The original notebook's Keras CNN reached {pct(ORIGINAL_ACCURACY)}; this run is "
                  f"{_points(abs(gap))} {'above' if gap >= 0 else 'below'} it.")
    return [first, confusion_sentence(f), calibration_sentence(f)]


def confusion_sentence(f: dict) -> str:
    """The most confused class pairs by name, their share of the errors, and the per-class range."""
    if not f["pairs"]:
        return "There are no errors to analyse."
    names = f["names"]
    pairs = "; ".join(f"true {names[t]} read as {names[p]} ({n}×)" for t, p, n in f["pairs"])
    held = sum(n for *_, n in f["pairs"])
    known = [c for c in f["class_accuracy"] if c["accuracy"] is not None]
    worst, best = min(known, key=lambda c: c["accuracy"]), max(known, key=lambda c: c["accuracy"])
    return (f"The most confused pairs are {pairs}: together {held} of the {f['errors']} errors "
            f"({pct(held / f['errors'])}). Per-class accuracy runs from {pct(worst['accuracy'])} for "
            f"{worst['name']} to {pct(best['accuracy'])} for {best['name']}.")


def calibration_sentence(f: dict) -> str:
    """ECE, NLL, and whether the mean confidence sits above (overconfident) or below the accuracy."""
    over = f["mean_confidence"] - f["accuracy"]
    return (f"Calibration: expected calibration error {f['ece']:.3f} ({scores.ECE_BINS} bins) and negative "
            f"log-likelihood {f['nll']:.3f} nats; the mean confidence {pct(f['mean_confidence'])} is "
            f"{_points(abs(over))} {'above' if over >= 0 else 'below'} the accuracy, so the ensemble is "
            f"{'over' if over >= 0 else 'under'}confident on average.")


# ---------------------------------------------------------------------------
# Impact of the images and improvements
# ---------------------------------------------------------------------------
def impact(f: dict, noun: str) -> list[str]:
    return [concentration_sentence(f, noun), uncertainty_sentence(f, noun), label_issue_sentence(f, noun)]


def concentration_sentence(f: dict, noun: str) -> str:
    """How many errors the 10 and 50 most ambiguous images hold, and what fixing them all would gain."""
    e10, e50, errors = f["top_errors"][10], f["top_errors"][50], max(f["errors"], 1)
    verdict = (f"so the errors are concentrated in a few hard {noun}s"
               if e50 >= errors / 2 else f"so most errors lie beyond the 50 most ambiguous {noun}s")
    return (f"The 10 most ambiguous {noun}s (lowest ensemble probability of the true label) hold {e10} of the "
            f"{f['errors']} errors ({pct(e10 / errors)}); the 50 most ambiguous hold {e50} ({pct(e50 / errors)}), "
            f"{verdict}. Classifying all 50 correctly would raise accuracy by at most "
            f"{_points(e50 / f['n'])} — the original analysis judged the most ambiguous {noun}s' impact "
            f"small; here they hold {pct(e50 / errors)} of the errors.")


def uncertainty_sentence(f: dict, noun: str) -> str:
    """The errors' entropy split into aleatoric and epistemic parts, and what that says about retraining."""
    if f["members"] == 1:
        return ("With a single network the uncertainty cannot be split into its aleatoric and epistemic parts; "
                "train an ensemble (--members) to measure it.")
    e, a = f["split_errors"], f["split_all"]
    advice = (f"Most of it is aleatoric — the {noun}s themselves are unclear to every member — which more members "
              "cannot remove and more data may not, so retraining on them (the original suggestion, untested "
              "here) may buy little." if e["epistemic_share"] < 0.5 else
              "Much of it is epistemic — the members disagree — which more data, augmentation or more members "
              "can still reduce, as the original analysis suggested.")
    return (f"On the misclassified {noun}s the predictive entropy averages {e['total']:.3f} nats: "
            f"{e['aleatoric']:.3f} aleatoric (mean member entropy) and {e['epistemic']:.3f} epistemic (mutual "
            f"information), an epistemic share of {pct(e['epistemic_share'])} (over all {noun}s: "
            f"{pct(a['epistemic_share'])}). {f['all_members_wrong']} of the {f['errors']} errors are made by "
            f"{'both' if f['members'] == 2 else 'all ' + str(f['members'])} members. {advice}")


def label_issue_sentence(f: dict, noun: str) -> str:
    """cleanlab's flagged test labels and, where a human review exists, how each ranking finds them;
    without an audit, the commands that would measure it."""
    if f["label_issues_found"] is None:
        validate_too = " (and 'validate')" if f["dataset"] in validate.REVIEWS else ""
        return (f"Whether some of these {noun}s carry a wrong label is not measured in this run (one member, "
                f"--no-cross-fit, or a run made before 0.8): run 'ambiguous-digits audit'{validate_too} into this directory and re-render "
                f"the report.")
    n = f["label_issues_found"]
    text = (f"cleanlab flags {n} test {noun}{'' if n == 1 else 's'} as likely label error{'' if n == 1 else 's'} "
            f"at its default thresholds; every test {noun} is ranked by its label quality, the most suspect first.")
    if f["validation"]:
        v0 = next(iter(f["validation"].values()))
        found = "; ".join(f"the {name.replace('_', ' ')} ranking holds {v['errors_in_top_10']} of them in its top 10 "
                          f"and {v['errors_in_top_100']} in its top 100 "
                          f"(average precision {v['average_precision']:.3f})"
                          for name, v in f["validation"].items())
        text += (f" Against the human review ({len(v0['errors'])} confirmed label errors among {v0['reviewed']} "
                 f"reviewed test {noun}s), {found}; the review authors' own ranking reached "
                 f"{v0['reference']['average_precision']}.")
    return (f"{text} {noun.capitalize()}s with a wrong label should be relabelled or dropped before retraining "
            "on ambiguous ones.")
