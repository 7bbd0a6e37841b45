"""Data files that used to train on the wrong data silently (issue 25.3): what is read, logged and
refused besides the one-line refusals of tests/test_bad_inputs.py."""

from __future__ import annotations

import csv
import logging

import pytest

from lightning_topo.data import read_table
from lightning_topo.models import TextClassificationDataModule


def _rows(n: int = 40) -> str:
    return "".join(f"film {i},{'pos' if i % 2 else 'neg'}\n" for i in range(n))


def test_a_50_mb_cell_is_read_and_the_csv_limit_is_restored(tmp_path):
    path = tmp_path / "big.csv"
    big = "x" * 50_000_000
    path.write_text("text,label\n" + _rows() + f'"{big}",pos\n')
    before = csv.field_size_limit()
    rows, columns = read_table(path, "data_file")
    assert columns == ["text", "label"] and len(rows) == 41
    assert rows[-1]["text"] == big
    assert csv.field_size_limit() == before  # no process-wide change


def test_quoted_delimiters_and_blank_lines_are_fine(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text('text,label\n"good, not great",pos\n\nbad,neg\n')
    rows, _ = read_table(path, "data_file")
    assert rows == [{"text": "good, not great", "label": "pos"}, {"text": "bad", "label": "neg"}]


def test_the_label_set_is_logged(tmp_path, caplog):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + _rows())
    with caplog.at_level(logging.INFO):
        dm = TextClassificationDataModule(data_file=str(path))
        assert dm.num_classes == 2
    assert "2 classes found ('neg': 20, 'pos': 20)" in caplog.text


def test_min_class_examples_1_keeps_a_rare_class(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + _rows() + "odd film,meh\n")
    with pytest.raises(ValueError, match="'meh' \\(1 rows\\)"):
        _ = TextClassificationDataModule(data_file=str(path)).num_classes
    dm = TextClassificationDataModule(data_file=str(path), min_class_examples=1)
    assert dm.num_classes == 3
