"""The report's data map of the training digits (templates/datamap.html), for a run with train_dynamics.csv.

The members' training steps recorded how each training digit was learnt (dynamics.py): the map puts
every one at (variability, confidence), and two galleries show the most ambiguous and the hardest to
learn. They are training digits, apart from the test rankings, and a wrong label shows up as hard to learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import dynamics, gallery, manifest, rundir
from .config import ConfigError

if TYPE_CHECKING:
    from .data import Dataset
    from .report import Run


# The galleries' headings, by region.
TITLES = {dynamics.REGIONS[1]: "Most ambiguous training", dynamics.REGIONS[2]: "Hardest-to-learn training"}


def section(run: Run, ds: Dataset) -> dict | None:
    """What datamap.html shows; None without train_dynamics.csv (no cross-fitted members, or an older run)."""
    if run.dynamics is None or not manifest.listed(run.dir, rundir.DATA_MAP_FILE):
        return None
    table = run.dynamics
    n = len(table["index"])
    if n > len(ds.y_train) or not np.array_equal(table["label"].astype(np.int64), ds.y_train[:n]):
        raise ConfigError(f"{run.dir / rundir.DYNAMICS_FILE}: its labels are not this data set's training labels")
    png = manifest.verified(run.dir, rundir.DATA_MAP_FILE).read_bytes()
    counts = dynamics.region_counts(table)
    return {"plot": gallery.png_uri(png), "counts": counts, "n": n,
            "ambiguous_at": dynamics.AMBIGUOUS_VARIABILITY, "hard_below": dynamics.HARD_CONFIDENCE,
            "galleries": [{"id": "map-" + region.split()[0], "title": TITLES[region],
                           "cards": _cards(table, rows, ds.x_train, run.class_names)}
                          for region, rows in dynamics.shown(table).items()]}


def _cards(table: dict[str, np.ndarray], rows: np.ndarray, x_train: np.ndarray, names: tuple[str, ...]) -> list[dict]:
    return [{"i": int(i), "label": names[int(table["label"][i])], "confidence": float(table["confidence"][i]),
             "variability": float(table["variability"][i]), "aum": float(table["aum"][i]),
             "img": gallery.digit_uri(x_train[i])} for i in rows]
