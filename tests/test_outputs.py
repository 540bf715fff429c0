"""The run's tables and contact sheets (outputs): read back strictly, drawn with any class name."""

import numpy as np
import pytest
from PIL import Image

from ambiguous_digits import outputs
from ambiguous_digits.config import ConfigError


def test_a_csv_cut_short_or_not_text_is_one_line_naming_the_line(tmp_path):
    (tmp_path / "scores.csv").write_text("index,label,margin\n0,3,0.5\n1,2,0.25\n2,1")
    with pytest.raises(ConfigError, match=r"scores.csv: line 4 has 2 fields, the header 3 \(cut short\?\)"):
        outputs.read_table(tmp_path / "scores.csv")
    (tmp_path / "scores.csv").write_bytes(b"index,label\n0,\xff\xfe\n")
    with pytest.raises(ConfigError, match="scores.csv: cannot read it as a CSV table"):
        outputs.read_table(tmp_path / "scores.csv")


def test_scores_csv_out_of_order_is_refused(tmp_path):
    (tmp_path / "scores.csv").write_text("index,label\n1,3\n0,2\n")
    with pytest.raises(ConfigError, match="canonical"):
        outputs.read_table(tmp_path / "scores.csv")
    (tmp_path / "scores.csv").write_text("label,margin\n3,0.5\n")  # a table written without its index column
    with pytest.raises(ConfigError, match="scores.csv: no 'index' column"):
        outputs.read_table(tmp_path / "scores.csv")


def test_a_contact_sheet_takes_dollar_signs_in_class_names_as_text(tmp_path):
    """'$^$' would be a broken formula to matplotlib; a class may well be called '$5 bill'."""
    images = np.zeros((2, 28, 28), np.uint8)
    outputs.contact_sheet(tmp_path / "sheet.png", images, ["#0 $^$", "#1 $\\foo$ -> $5 bill"], "labels $^$")
    assert Image.open(tmp_path / "sheet.png").size[0] > 0
