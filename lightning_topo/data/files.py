"""Reading labelled text tables (CSV, TSV, JSONL) and turning their labels into class ids.

Standard library only. Every error names the file (and the row or byte where it went wrong)
and says how to fix it, so that a bad file is refused before anything is tokenised or trained.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SPLIT_ALIASES",
    "check_columns",
    "check_file",
    "detect_format",
    "label_ids",
    "normalise_labels",
    "read_table",
    "rows_by_split",
    "write_text_atomic",
]

def write_text_atomic(
    path: str | os.PathLike[str], content: str | bytes | Callable[[Path], None], *, overwrite: bool = False
) -> Path:
    """The one atomic writer of the package: ``content`` goes to a temporary sibling, then is renamed
    onto ``path``, so ``path`` is never seen half-written and a failed write leaves nothing behind.

    Args:
        path: the file to write (its folder is created).
        content: text (UTF-8), bytes, or ``write(tmp_path)`` that writes the file itself (a figure,
            a CSV writer, an ONNX export); the temporary file keeps ``path``'s suffix.
        overwrite: replace an existing ``path``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        if callable(content):
            content(tmp)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


#: Values of a ``split_column`` accepted for each split (compared case-insensitively).
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev"),
    "test": ("test", "testing"),
}
#: File name endings and the format each one means (a trailing ``.gz`` is ignored).
FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_INT_RE = re.compile(r"^[+-]?\d+$")


# --------------------------------------------------------------------------------------- reading
def detect_format(path: str | Path) -> str:
    """``"csv"``, ``"tsv"`` or ``"jsonl"`` from the file name (``.csv``, ``.tsv``/``.tab``,
    ``.jsonl``/``.ndjson``/``.json``, each optionally followed by ``.gz``).

    Raises:
        ValueError: for any other name.
    """
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {str(path)!r} from its name; use a .csv, .tsv or .jsonl file "
            "(optionally .gz-compressed)"
        )
    return fmt


def check_file(path: str | Path, argument: str = "data file") -> Path:
    """``path`` as a ``Path`` (``~`` expanded) if it is an existing file.

    Raises:
        FileNotFoundError: it does not exist.
        IsADirectoryError: it is a folder (the message lists data files inside it).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.is_file() and _has_known_format(p))[:5]
        hint = f"; data files there: {inside}" if inside else ""
        raise IsADirectoryError(
            f"{argument} {str(path)!r} is a directory, not a file; pass one .csv, .tsv or .jsonl file{hint}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{argument} {str(path)!r} does not exist")
    return path


def _has_known_format(path: Path) -> bool:
    try:
        detect_format(path)
    except ValueError:
        return False
    return True


def _decode(data: bytes, path: Path, argument: str) -> str:
    """UTF-8 text of ``data`` (a leading byte-order mark is dropped), or an error naming the byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{argument} {str(path)!r} is not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} "
            f"(line {line}) cannot be decoded. Re-save the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > utf8_{path.name}`"
        ) from None


def _read_text(path: Path, argument: str) -> str:
    if path.suffix.lower() == ".gz":
        try:
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        except (OSError, EOFError) as err:
            raise ValueError(f"{argument} {str(path)!r} is not a readable gzip file ({err})") from None
    else:
        data = path.read_bytes()
    return _decode(data, path, argument)


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` of :func:`json.loads`: a key given twice would silently keep the last."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _parse_jsonl(text: str, path: Path) -> list[Any]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            return json.loads(stripped, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON at line {err.lineno} ({err.msg})") from None
        except _DuplicateKey as err:
            raise ValueError(f"{path}: a record names key {err.args[0]!r} twice; each key once") from None
    rows = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line, object_pairs_hook=_no_duplicate_keys))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
            except _DuplicateKey as err:
                raise ValueError(
                    f"{path}:{line_no}: the record names key {err.args[0]!r} twice (the last would silently "
                    "win); give each key once"
                ) from None
    return rows


def _parse_delimited(
    text: str, path: Path, argument: str, delimiter: str
) -> tuple[list[dict[str, str]], list[str]]:
    """Rows of a CSV/TSV text with a header line.

    Refused, naming the line: a header that names a column twice (the last one would silently win)
    and a row with more or fewer fields than the header (e.g. an unquoted delimiter inside a
    text, which would shift a fragment of the text into the label column). Blank lines are
    skipped. Fields may be as long as the file: the csv module's field size limit (128 KiB by
    default) is raised to the text's length for this read and restored after it.
    """
    where = f"{argument} {str(path)!r}"
    name = "tab" if delimiter == "\t" else repr(delimiter)
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, min(len(text) + 1, 2**31 - 1)))
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return [], []
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise ValueError(
                f"{where}: line 1 (the header) names column(s) {repeated} more than once, so one column would "
                f"silently replace the other; the header is {header}. Give every column its own name"
            )
        rows = []
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip() and len(header) > 1):
                continue  # a blank line
            if len(fields) != len(header):
                raise ValueError(
                    f"{where}: line {reader.line_num} has {len(fields)} fields but the header has {len(header)} "
                    f"({header}). A text that contains the delimiter ({name}) must be quoted, e.g. "
                    '"good, not great"; fix or remove that line'
                )
            rows.append(dict(zip(header, fields, strict=True)))
    except csv.Error as err:
        raise ValueError(
            f"{where}: line {reader.line_num} cannot be read as {name}-separated text ({err})"
        ) from None
    finally:
        csv.field_size_limit(previous)
    return rows, header


def read_table(path: str | Path, argument: str = "data file") -> tuple[list[dict[str, Any]], list[str]]:
    """Read a CSV, TSV or JSONL file (optionally gzip-compressed) into rows.

    CSV/TSV need a header line; values are strings. JSONL holds one JSON object per line
    (a ``.json`` file holding one list of objects is accepted too); values keep their JSON type.
    Files must be UTF-8 (a byte-order mark is allowed).

    Args:
        path: the file; the format comes from its name (:func:`detect_format`).
        argument: how error messages name the file (e.g. ``"data_file"``).

    Returns:
        ``(rows, columns)``: a list of dicts and the column names in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder.
        ValueError: unknown format, not UTF-8 (the message gives the byte offset and line), not
            gzip, invalid JSON or a JSON record that is not an object; a CSV/TSV header that names a
            column twice, a row with another number of fields than the header (the line is named),
            a JSON record with a key given twice.
    """
    path = check_file(path, argument)
    fmt = detect_format(path)
    text = _read_text(path, argument)
    if fmt in ("csv", "tsv"):
        return _parse_delimited(text, path, argument, "," if fmt == "csv" else "\t")
    rows = _parse_jsonl(text, path)
    columns: list[str] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: record {i + 1} is a {type(row).__name__}, expected a JSON object")
        columns.extend(key for key in row if key not in columns)
    return rows, columns


def check_columns(columns: Sequence[str], required: Mapping[str, str | None], where: str) -> None:
    """Raise if a column named by an argument is missing.

    Args:
        columns: the columns the file has.
        required: argument name -> column name, e.g. ``{"text_column": "text"}``; ``None`` values
            are skipped.
        where: how the message names the file, e.g. ``"data_file 'x.csv'"``.

    Raises:
        ValueError: naming the argument, the missing column and the columns found.
    """
    import difflib

    for argument, column in required.items():
        if column is None or column in columns:
            continue
        close = difflib.get_close_matches(column, list(columns), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"{where}: missing column(s) [{column!r}] ({argument}={column!r}); the file has columns "
            f"{list(columns)}. Set {argument}= to the right name{hint}"
        )


def rows_by_split(rows: Sequence[Mapping[str, Any]], split_column: str, where: str) -> dict[str, list[Any]]:
    """Group ``rows`` into ``train``/``val``/``test`` by the value of ``split_column`` (see
    :data:`SPLIT_ALIASES`); an empty test group is dropped.

    Raises:
        ValueError: a row whose split value is not one of the aliases.
    """
    alias = {a: s for s, names in SPLIT_ALIASES.items() for a in names}
    out: dict[str, list[Any]] = {"train": [], "val": [], "test": []}
    for i, row in enumerate(rows):
        value = str(row.get(split_column) or "").strip().lower()
        if value not in alias:
            raise ValueError(
                f"{where}: row {i + 1} has {split_column}={row.get(split_column)!r}; expected one of {sorted(alias)}"
            )
        out[alias[value]].append(row)
    if not out["test"]:
        del out["test"]
    return out


# ---------------------------------------------------------------------------------------- labels
def _label_value(v: Any, i: int, where: str) -> tuple[str, Any]:
    if v is None or (isinstance(v, str) and not v.strip()):
        raise ValueError(f"{where}: row {i + 1} has an empty label")
    if isinstance(v, bool):
        raise TypeError(f"{where}: labels must be integers or strings; row {i + 1} has a bool ({v!r})")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int):
        return "int", v
    if isinstance(v, str):
        return "str", v.strip()
    raise TypeError(
        f"{where}: labels must be integers or strings; row {i + 1} has {type(v).__name__} {v!r} "
        "(regression targets are not supported)"
    )


def normalise_labels(values: Sequence[Any], where: str) -> tuple[list[Any], str]:
    """Labels as all-ints or all-strings, and which of the two (``"int"`` / ``"str"``).

    Integral floats (``1.0``) and integer strings (``"1"``, as CSV gives them) become ints;
    other strings stay strings (stripped).

    Raises:
        ValueError: an empty label.
        TypeError: a bool, a list, a non-integer number (regression targets), or ints mixed
            with strings.
    """
    pairs = [_label_value(v, i, where) for i, v in enumerate(values)]
    kinds = {kind for kind, _ in pairs}
    out = [v for _, v in pairs]
    if kinds == {"int", "str"}:
        raise TypeError(f"{where}: labels mix integers and strings; use one kind")
    if kinds != {"str"}:
        return out, "int"
    if all(_INT_RE.match(s) for s in out):
        return [int(s) for s in out], "int"
    non_integral = [s for s in out if _is_float(s) and not _INT_RE.match(s)]
    if non_integral and all(_is_float(s) for s in out):
        raise TypeError(
            f"{where}: labels must be integers or strings; found non-integer numbers such as "
            f"{non_integral[0]!r} (regression targets are not supported)"
        )
    return out, "str"


def _is_float(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def label_ids(
    train_labels: Sequence[Any],
    all_labels: Sequence[Any],
    kind: str,
    label_names: Sequence[str] | None = None,
) -> tuple[dict[int, str], dict[Any, int]]:
    """The classes: ``(id2label, label -> id)``.

    Integer labels are their own ids (``num_classes = max + 1``, or ``len(label_names)``); string
    labels get ids in sorted order of the training labels, or in the order of ``label_names``.

    Args:
        train_labels: normalised labels of the train split (at least 2 distinct values).
        all_labels: normalised labels of every split (for the integer range).
        kind: ``"int"`` or ``"str"`` (from :func:`normalise_labels`).
        label_names: class names in id order.

    Raises:
        ValueError: fewer than 2 classes, a negative integer label, or too few ``label_names``.
    """
    distinct = sorted(set(train_labels))
    if len(distinct) < 2:
        raise ValueError(
            f"classification needs at least 2 classes; the train split has labels with "
            f"{len(distinct)} distinct value ({distinct[0]!r})"
        )
    if kind == "str":
        names = list(label_names) if label_names is not None else distinct
        return {i: str(n) for i, n in enumerate(names)}, {str(n): i for i, n in enumerate(names)}
    low, num = min(all_labels), max(all_labels) + 1
    if low < 0:
        raise ValueError(f"integer labels must be >= 0; found {low}")
    if label_names is not None:
        if len(label_names) < num:
            raise ValueError(f"label_names has {len(label_names)} names but labels go up to {num - 1}")
        num = len(label_names)
    names = list(label_names) if label_names is not None else [str(i) for i in range(num)]
    return {i: str(names[i]) for i in range(num)}, {i: i for i in range(num)}
