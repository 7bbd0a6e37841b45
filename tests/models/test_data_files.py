"""lightning_topo.data.files: reading CSV/TSV/JSONL, label normalisation, class ids, clear errors."""

from __future__ import annotations

import gzip
import json

import pytest

from lightning_topo.data.files import (
    check_columns,
    detect_format,
    label_ids,
    normalise_labels,
    read_table,
    rows_by_split,
)


def test_formats_from_name():
    assert detect_format("a.csv") == "csv"
    assert detect_format("dir.v2/a.TSV.gz") == "tsv"
    assert detect_format("a.tab") == "tsv"
    assert detect_format("a.ndjson") == "jsonl"
    with pytest.raises(ValueError, match=r"cannot tell the format of 'a.xlsx'.*\.csv, \.tsv or \.jsonl"):
        detect_format("a.xlsx")


def test_csv_tsv_with_bom_quotes_and_gzip(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_bytes('\ufefftext,label\n"a, b",1\ncafé,0\n'.encode())
    rows, columns = read_table(csv_file)
    assert columns == ["text", "label"]  # the byte-order mark is not part of the first name
    assert rows == [{"text": "a, b", "label": "1"}, {"text": "café", "label": "0"}]
    tsv = tmp_path / "d.tsv.gz"
    with gzip.open(tsv, "wt", encoding="utf-8") as fh:
        fh.write("label\ttext\n1\tx y\n")
    assert read_table(tsv) == ([{"label": "1", "text": "x y"}], ["label", "text"])


def test_jsonl_and_json_list_keep_types_and_union_columns(tmp_path):
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 0, "extra": true}\n')
    rows, columns = read_table(jl)
    assert columns == ["text", "label", "extra"]
    assert rows[1] == {"text": "b", "label": 0, "extra": True}
    js = tmp_path / "d.json"
    js.write_text(json.dumps([{"text": "a", "label": "x"}]))
    assert read_table(js) == ([{"text": "a", "label": "x"}], ["text", "label"])


def test_bad_files_name_the_file_and_place(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"text,label\ngood,1\ncaf\xe9,0\n")
    with pytest.raises(
        ValueError, match=r"data_file '.*latin.csv' is not UTF-8.*0xe9 at offset 21 \(line 3\).*iconv"
    ):
        read_table(latin, "data_file")
    with pytest.raises(IsADirectoryError, match=r"train_file '.*' is a directory.*\['latin.csv'\]"):
        read_table(tmp_path, "train_file")
    with pytest.raises(FileNotFoundError, match="val_file '.*nope.csv' does not exist"):
        read_table(tmp_path / "nope.csv", "val_file")
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"b.jsonl:2: not valid JSON"):
        read_table(broken)
    broken.write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="record 2 is a list, expected a JSON object"):
        read_table(broken)
    fake_gz = tmp_path / "f.csv.gz"
    fake_gz.write_text("text,label\n")
    with pytest.raises(ValueError, match="not a readable gzip file"):
        read_table(fake_gz)


def test_normalise_labels():
    assert normalise_labels(["1", " 0 ", "2"], "f") == ([1, 0, 2], "int")
    assert normalise_labels([1.0, 0, 3], "f") == ([1, 0, 3], "int")
    assert normalise_labels([" pos", "neg "], "f") == (["pos", "neg"], "str")
    assert normalise_labels(["1", "neg"], "f") == (["1", "neg"], "str")  # names that happen to be digits
    with pytest.raises(ValueError, match="f: row 2 has an empty label"):
        normalise_labels(["a", " "], "f")
    with pytest.raises(TypeError, match="row 1 has a bool"):
        normalise_labels([True, False], "f")
    with pytest.raises(TypeError, match="regression targets"):
        normalise_labels(["0.5", "1.5"], "f")
    with pytest.raises(TypeError, match="regression targets"):
        normalise_labels([0.5, 1], "f")
    with pytest.raises(TypeError, match="mix integers and strings"):
        normalise_labels([1, "a"], "f")


def test_label_ids():
    id2label, to_id = label_ids(["pos", "neg"], ["pos", "neg"], "str")
    assert id2label == {0: "neg", 1: "pos"} and to_id == {"neg": 0, "pos": 1}
    id2label, to_id = label_ids(["pos", "neg"], ["pos", "neg"], "str", label_names=["pos", "neg"])
    assert to_id == {"pos": 0, "neg": 1}
    id2label, _ = label_ids([0, 2], [0, 2, 1], "int")
    assert id2label == {0: "0", 1: "1", 2: "2"}
    assert label_ids([0, 1], [0, 1], "int", label_names=["a", "b", "c"])[0] == {0: "a", 1: "b", 2: "c"}
    with pytest.raises(ValueError, match="at least 2 classes"):
        label_ids([1, 1], [1, 1], "int")
    with pytest.raises(ValueError, match="must be >= 0; found -1"):
        label_ids([0, 1], [0, 1, -1], "int")
    with pytest.raises(ValueError, match="label_names has 1 names but labels go up to 1"):
        label_ids([0, 1], [0, 1], "int", label_names=["a"])


def test_check_columns_names_the_argument_and_suggests():
    check_columns(["text", "label"], {"text_column": "text", "text_pair_column": None}, "f")
    with pytest.raises(
        ValueError, match=r"label_column='lable'.*columns \['text', 'label'\].*label_column=.*'label'"
    ):
        check_columns(["text", "label"], {"label_column": "lable"}, "data_file 'x.csv'")


def test_rows_by_split_aliases():
    rows = [{"s": "Train"}, {"s": "dev"}, {"s": "validation"}, {"s": "training"}]
    parts = rows_by_split(rows, "s", "f")
    assert [len(parts[k]) for k in ("train", "val")] == [2, 2] and "test" not in parts
    with pytest.raises(ValueError, match=r"row 1 has s='holdout'"):
        rows_by_split([{"s": "holdout"}], "s", "f")
