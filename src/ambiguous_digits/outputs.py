"""Writing a run's results: the per-digit table, the digit images, contact sheets, the data map."""

from __future__ import annotations

import csv
import io
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from . import files
from .config import ConfigError

# Column order of scores.csv; float columns get this many significant digits,
# enough to tell apart probabilities like 0.99999 and 0.999999.
FLOAT_DIGITS = 7
# Columns of a per-digit table that hold text (everything else is a number).
TEXT_COLUMNS = ("reasons", "region")
SHEET_COLUMNS = 5
SHEET_CELL_INCHES = 2.2
# Characters of a 10-pt title line that fit one 2.2-inch cell at 80 dpi (checked by eye); longer lines (class
# names such as 'T-shirt/top') wrap instead of running into the next cell's title.
SHEET_TITLE_CHARS = 22


def pyplot():
    """matplotlib's pyplot, drawing to files only; imported when a figure is drawn (`predict` draws none, and
    the import is a fifth of its start-up)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return ""
        if float(value).is_integer() and abs(value) < 2**53:
            return str(int(value))
        return f"{value:.{FLOAT_DIGITS}g}"
    return str(value)


def table_csv(table: dict[str, np.ndarray]) -> str:
    """Columns of equal length -> CSV text; NaN becomes an empty cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table)
    for row in zip(*table.values()):
        writer.writerow([_cell(v) for v in row])
    return buf.getvalue()


def write_table(path: Path, table: dict[str, np.ndarray]) -> None:
    files.write_text(path, table_csv(table))


def read_rows(path: Path) -> list[list[str]]:
    """A CSV file's rows as text, header first; one ConfigError where it cannot be read as CSV."""
    try:
        with open(path, newline="") as f:
            return list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"{path}: cannot read it as a CSV table ({e})") from None


def read_table(path: Path) -> dict[str, np.ndarray]:
    """A per-digit CSV as float columns (empty cell = NaN); rows must be in canonical index order."""
    rows = read_rows(path)
    if len(rows) < 2:
        raise ConfigError(f"{path}: no rows")
    short = next((i for i, row in enumerate(rows[1:], start=2) if len(row) != len(rows[0])), None)
    if short is not None:
        raise ConfigError(f"{path}: line {short} has {len(rows[short - 1])} fields, the header {len(rows[0])} "
                          f"(cut short?)")
    columns = list(zip(*rows[1:]))
    try:
        table = {name: np.array(col, dtype=object) if name in TEXT_COLUMNS else
                 np.array([float(v) if v else np.nan for v in col]) for name, col in zip(rows[0], columns)}
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    if "index" not in table:
        raise ConfigError(f"{path}: no 'index' column (the image each row is)")
    if not np.array_equal(table["index"], np.arange(len(rows) - 1)):
        raise ConfigError(f"{path}: rows are not in canonical index order")
    return table


def digit_png(image: np.ndarray) -> bytes:
    """A (28, 28) uint8 digit as a grayscale PNG of the original pixels."""
    assert image.dtype == np.uint8 and image.ndim == 2
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_digit(path: Path, image: np.ndarray) -> None:
    files.write_bytes(path, digit_png(image))


def contact_sheet(path: Path, images: np.ndarray, titles: list[str], heading: str) -> None:
    """Save the digits (K, 28, 28) in a grid, each large, each titled."""
    plt = pyplot()
    k = max(len(images), 1)
    cols = min(SHEET_COLUMNS, k)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * SHEET_CELL_INCHES, rows * SHEET_CELL_INCHES + 0.6),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        # parse_math=False: a "$" in a class name is text, not the start of a formula
        ax.set_title("\n".join(textwrap.fill(line, SHEET_TITLE_CHARS) for line in title.split("\n")), fontsize=10,
                     parse_math=False)
    fig.suptitle(heading, fontsize=12, parse_math=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    files.write_bytes(path, buf.getvalue())


def data_map(path: Path, confidence: np.ndarray, variability: np.ndarray, correctness: np.ndarray,
             ambiguous_at: float, hard_below: float, heading: str) -> None:
    """Dataset Cartography's map: each training digit at (variability, confidence), coloured by correctness,
    with the regions' borders (dynamics.AMBIGUOUS_VARIABILITY, HARD_CONFIDENCE) drawn and named."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    order = np.argsort(-correctness, kind="stable")  # the rare wrong ones drawn last, on top
    dots = ax.scatter(variability[order], confidence[order], c=correctness[order], cmap="viridis_r", vmin=0, vmax=1,
                      s=3, alpha=0.6, linewidths=0, rasterized=True)
    fig.colorbar(dots, ax=ax, label="correctness (fraction of epochs the given label won)")
    ax.axvline(ambiguous_at, color="0.4", ls="--", lw=1)
    ax.plot([0, ambiguous_at], [hard_below, hard_below], color="0.4", ls="--", lw=1)
    box = {"facecolor": "white", "edgecolor": "0.6", "alpha": 0.85}
    ax.text(0.97, 0.97, "easy to learn", transform=ax.transAxes, ha="right", va="top", fontsize=10, bbox=box)
    ax.text(0.02, 0.03, "hard to learn", transform=ax.transAxes, va="bottom", fontsize=10, bbox=box)
    ax.text(0.97, 0.5, "ambiguous", transform=ax.transAxes, ha="right", fontsize=10, bbox=box)
    ax.set_xlim(0, max(0.5, float(np.max(variability, initial=0)) * 1.05))
    ax.set_ylim(0, 1)
    ax.set_xlabel("variability (std over epochs of the given label's probability)")
    ax.set_ylabel("confidence (mean probability of the given label)")
    ax.set_title(textwrap.fill(heading, 70), fontsize=10, parse_math=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    files.write_bytes(path, buf.getvalue())
