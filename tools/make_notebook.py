"""Writes mnist_notebook.ipynb (outputs stripped) from the cells below: `python tools/make_notebook.py`."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# Ambiguous handwritten digits in MNIST

This notebook steps through how the most ambiguous test digits are found, with the
package's public API: load the real MNIST, train (or load a finished run), compute the
measures, look at the two classic definitions' top 10, the ensemble and label-issue
views, and answer the original analysis's three questions from the measured numbers.

Row *i* of every table is test image *i*; the images are named by that index."""),
    ("code", """# Parameters. The test suite runs this notebook on a tiny configuration through these
# environment variables; by default it uses (or makes) a full run in results/.
import os
from pathlib import Path

RUN_DIR = Path(os.environ.get("NOTEBOOK_RUN_DIR", "results"))
DATASET = os.environ.get("NOTEBOOK_DATASET", "mnist")  # any --dataset: fashion-mnist, npz:FILE, ...
DATA_DIR = os.environ.get("NOTEBOOK_DATA_DIR")  # None: the data set's default cache
TINY = os.environ.get("NOTEBOOK_TINY") == "1"  # a few hundred digits, one short epoch"""),
    ("md", "## 1. The data: the real MNIST (or another --dataset), verified by checksum"),
    ("code", """import numpy as np
from ambiguous_digits import data

ds = data.load_dataset(DATASET, DATA_DIR, progress=False)
names = ds.class_names  # label k is names[k]; for MNIST the digits themselves
print(ds.name, "train", ds.x_train.shape, ds.x_train.dtype, "test", ds.x_test.shape, "from", ds.source)
print("classes:", ", ".join(names))
expected = data.PUBLISHED[DATASET].content_md5 if DATASET in data.PUBLISHED else {}
for name, md5 in ds.checksums.items():
    print(f"  {name}: md5 {md5}" + (f" (expected {expected[name]})" if expected else ""))"""),
    ("md", """## 2. Train an ensemble (or load a finished run)

`commands.run.run` is what `ambiguous-digits run` calls: it trains the CNNs, scores every
test digit and writes the run directory. The recipe (what decides the numbers) is kept apart
from the invocation (where it writes and runs). A finished run is reused, never retrained."""),
    ("code", """from ambiguous_digits.commands import run
from ambiguous_digits.config import Invocation, RunOutputs, start_recipe

if not (RUN_DIR / "summary.json").is_file():
    tiny = dict(train_limit=600, test_limit=300, epochs=1, widths=(8, 16, 32), members=2)
    recipe, _ = start_recipe({"dataset": DATASET, **(tiny if TINY else {})})  # the data set's own recipe, as `run`
    where = Invocation(out=RUN_DIR, data_dir=Path(DATA_DIR) if DATA_DIR else None, progress=False)
    run.run(recipe, RunOutputs(top=5) if TINY else RunOutputs(), where, log=lambda _: None)

import json
summary = json.loads((RUN_DIR / "summary.json").read_text())
if summary["data"]["md5"] != ds.checksums:  # a run on other data: its rows are not these images
    raise ValueError(f"{RUN_DIR} holds a run on {summary['data']['dataset']}, not on {ds.name}: set "
                     f"NOTEBOOK_DATASET to its data set, or NOTEBOOK_RUN_DIR to another directory")
print(f"ensemble of {summary['members']}: test accuracy {summary['test_accuracy']:.2%}, "
      f"{summary['test_errors']} errors; members {np.round(summary['member_accuracy'], 4).tolist()}")
print(summary["model"])"""),
    ("md", """## 3. The measures, recomputed from the saved probabilities

Scoring is pure numpy over the per-member probabilities `(members, N, 10)`;
nothing here retrains."""),
    ("code", """import pandas as pd
from ambiguous_digits import scores

with np.load(RUN_DIR / "probs.npz") as z:
    member_probs, labels = z["probs"], z["labels"]
table = pd.DataFrame(scores.score_table(member_probs, labels))
assert (table["index"] == np.arange(len(table))).all()  # row i is test image i
table.head()"""),
    ("md", """## 4. The two classic definitions, top 10

*Misclassified yet most confident* (the original analysis's main definition) and
*least confident*."""),
    ("code", """import matplotlib.pyplot as plt

def show(indices, title):
    if len(indices) == 0:  # e.g. no misclassified test image at all
        print(f"{title}: no test image to show")
        return
    fig, axes = plt.subplots(1, len(indices), figsize=(1.6 * len(indices), 2.2), squeeze=False)
    for ax, i in zip(axes[0], indices):
        row = table.loc[i]
        ax.imshow(ds.x_test[i], cmap="gray_r")
        ax.set_title(f"#{i}\\n{names[int(row.label)]}\\u2192{names[int(row.pred)]} p={row.prob_pred:.2f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title)
    plt.show()

for name in ("confident_wrong", "least_confident"):
    top = scores.top_indices(table[f"rank_{name}"].to_numpy(), 10)
    show(top, name.replace("_", "-"))"""),
    ("md", """## 5. Ambiguity that belongs to the digit: the ensemble view

Total uncertainty splits into an aleatoric part (every network finds the digit unclear)
and an epistemic part (the networks disagree). `ambiguity` = 1 − the ensemble-mean
probability of the given label."""),
    ("code", """fig, ax = plt.subplots(figsize=(5, 4))
wrong = table["pred"] != table["label"]
ax.scatter(table["expected_entropy"], table["mutual_information"], s=4, c=np.where(wrong, "crimson", "grey"))
ax.set_xlabel("expected entropy (aleatoric, nats)")
ax.set_ylabel("mutual information (epistemic, nats)")
ax.set_title("every test digit; red = misclassified")
plt.show()
show(scores.top_indices(table["rank_ambiguity"].to_numpy(), 10), "ambiguity")
table.sort_values("rank_ambiguity").head(10)[["index", "label", "pred", "ambiguity", "vote_disagreement",
                                                "expected_entropy", "mutual_information", "members_wrong"]]"""),
    ("md", """## 6. Suspected label errors

`ambiguous-digits audit` (K-fold cross-validated probabilities, ranked by cleanlab) writes
`label_issues.csv`; `ambiguous-digits validate` compares it with the human review of 100
test digits by Northcutt et al. (2021)."""),
    ("code", """from ambiguous_digits import validate

issues_file = RUN_DIR / "label_issues.csv"
if issues_file.is_file():
    issues = pd.read_csv(issues_file)
    print(issues.sort_values("rank").head(10).to_string(index=False))
else:
    print("no audit in this run directory yet: run `ambiguous-digits audit --out", RUN_DIR, "`")
if DATASET not in validate.REVIEWS:
    print(f"no human review of {DATASET}'s labels exists (only MNIST's test set has one)")
elif len(table) == 10000:  # the review covers the whole test set
    review = validate.load_review(DATASET)
    v = validate.validate_ranking(table["rank_ambiguity"].to_numpy(), review)
    print({k: v[k] for k in ("errors_in_top_10", "errors_in_top_50", "errors_in_top_100", "average_precision")})
else:
    print(f"{len(table)} test digits scored: the human review needs all 10,000")"""),
    ("md", """## 7. The three questions, answered from this run's numbers

The same generated answers as in `report.html`."""),
    ("code", """from ambiguous_digits import report

facts = report.run_facts(report.load_run(RUN_DIR))
for answer in report.answers(facts):
    print(answer["question"].upper())
    for paragraph in answer["paragraphs"]:
        print(" ", paragraph)
    print()"""),
]


def build() -> nbformat.NotebookNode:
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


if __name__ == "__main__":
    path = Path(__file__).resolve().parent.parent / "mnist_notebook.ipynb"
    nbformat.write(build(), path)
    print(f"wrote {path}")
