"""``TextClassificationDataModule``: text files (or the embedded dataset) → padded token batches."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from lightning_topo.data import (
    ROTTEN_TOMATOES_LABEL_NAMES,
    SPLIT_NAMES,
    rotten_tomatoes_path,
    stratified_split,
    stratified_subset,
)
from lightning_topo.models.embedded import resolve_model_path

__all__ = ["TextClassificationDataModule", "PadCollator", "LengthGroupedSampler", "read_table"]

#: Values of a ``split_column`` accepted for each split (compared case-insensitively).
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev"),
    "test": ("test", "testing"),
}
_INT_RE = re.compile(r"^[+-]?\d+$")


# --------------------------------------------------------------------------------------- reading
def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".csv",):
        return "csv"
    if ext in (".tsv", ".tab"):
        return "tsv"
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise ValueError(
        f"cannot tell the format of {str(path)!r} from its name; use a .csv, .tsv or .jsonl file "
        "(optionally .gz-compressed)"
    )


def read_table(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a CSV, TSV or JSONL file (optionally gzip-compressed) into rows.

    CSV/TSV need a header line; values are strings. JSONL holds one JSON object per line
    (a ``.json`` file holding one list of objects is accepted too); values keep their JSON type.

    Returns:
        ``(rows, columns)``: a list of dicts and the column names in file order.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the format is unknown or a JSON line is not an object.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    fmt = _format_of(path)
    with _open_text(path) as fh:
        if fmt in ("csv", "tsv"):
            reader = csv.DictReader(fh, delimiter="," if fmt == "csv" else "\t")
            rows = [dict(r) for r in reader]
            columns = list(reader.fieldnames or [])
            return rows, columns
        text = fh.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(stripped)
    else:
        rows = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg})") from err
    columns: list[str] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: record {i + 1} is a {type(row).__name__}, expected a JSON object")
        for key in row:
            if key not in columns:
                columns.append(key)
    return rows, columns


# ---------------------------------------------------------------------------------------- labels
def _normalise_labels(values: Sequence[Any], where: str) -> tuple[list[int] | list[str], str]:
    """Labels as all-ints or all-strings, and which of the two (``"int"`` / ``"str"``)."""
    kinds = set()
    out: list[Any] = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and not v.strip()):
            raise ValueError(f"{where}: row {i + 1} has an empty label")
        if isinstance(v, bool):
            raise TypeError(f"{where}: labels must be integers or strings; row {i + 1} has a bool ({v!r})")
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, int):
            kinds.add("int")
            out.append(v)
        elif isinstance(v, str):
            kinds.add("str")
            out.append(v.strip())
        else:
            raise TypeError(
                f"{where}: labels must be integers or strings; row {i + 1} has {type(v).__name__} {v!r} "
                "(regression targets are not supported)"
            )
    if kinds == {"int", "str"}:
        raise TypeError(f"{where}: labels mix integers and strings; use one kind")
    if kinds == {"str"}:
        if all(_INT_RE.match(s) for s in out):
            return [int(s) for s in out], "int"
        non_integral = [s for s in out if _is_float(s) and not _INT_RE.match(s)]
        if non_integral and all(_is_float(s) for s in out):
            raise TypeError(
                f"{where}: labels must be integers or strings; found non-integer numbers such as "
                f"{non_integral[0]!r} (regression targets are not supported)"
            )
        return out, "str"
    return out, "int"


def _is_float(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


# --------------------------------------------------------------------------------------- batches
class PadCollator:
    """Pads a list of tokenised examples into a batch dict (right padding).

    Output: ``input_ids`` / ``attention_mask`` / (``token_type_ids``) ``(batch, seq)`` int64, where
    ``seq`` is the longest example of the batch, and ``labels`` ``(batch,)`` int64 when the
    examples have a ``label``.

    Args:
        pad_token_id: value that pads ``input_ids`` (other keys pad with 0).
    """

    def __init__(self, pad_token_id: int = 0) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        length = max(len(f["input_ids"]) for f in features)
        batch: dict[str, Tensor] = {}
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key not in features[0]:
                continue
            pad = self.pad_token_id if key == "input_ids" else 0
            batch[key] = torch.tensor(
                [list(f[key]) + [pad] * (length - len(f[key])) for f in features], dtype=torch.long
            )
        if "attention_mask" not in batch:
            batch["attention_mask"] = torch.tensor(
                [[1] * len(f["input_ids"]) + [0] * (length - len(f["input_ids"])) for f in features],
                dtype=torch.long,
            )
        if "label" in features[0]:
            batch["labels"] = torch.tensor([int(f["label"]) for f in features], dtype=torch.long)
        return batch


class LengthGroupedSampler(RandomSampler):
    """Random order in which each run of ``batch_size`` indices has similar lengths.

    Every epoch: a random permutation (from ``generator``) is cut into chunks of
    ``batch_size * group_batches`` indices, each chunk is sorted by length (longest first) and cut
    into batches, and the batches are shuffled. With dynamic padding this removes most padding
    (on the embedded data, ~1.5x fewer tokens per batch) while every epoch still sees a new
    random order. Use it with ``DataLoader(batch_size=batch_size, sampler=...)``. It is a
    ``RandomSampler`` subclass so that under DDP Lightning swaps in a *shuffling*
    ``DistributedSampler`` (plain random order).

    Args:
        lengths: ``(n,)`` length of each example.
        batch_size: the DataLoader's batch size.
        group_batches: batches per sorted chunk. Default 50.
        generator: source of randomness (seed it for determinism).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        group_batches: int = 50,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(range(len(lengths)), generator=generator)
        self.lengths = list(lengths)
        self.batch_size = int(batch_size)
        self.group = int(batch_size) * max(1, int(group_batches))
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        perm = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(perm), self.group):
            chunk = sorted(perm[start : start + self.group], key=lambda i: -self.lengths[i])
            batches.extend(chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size))
        # Keep a short final batch last so that every other batch is full.
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) != self.batch_size]
        order = torch.randperm(len(full), generator=self.generator).tolist()
        for k in order:
            yield from full[k]
        for b in short:
            yield from b


class _TokenisedSplit(Dataset):
    def __init__(self, encodings: Mapping[str, list[list[int]]], labels: Sequence[int] | None) -> None:
        self.encodings = encodings
        self.labels = labels
        self._len = len(next(iter(encodings.values())))

    def __len__(self) -> int:
        return self._len

    def lengths(self) -> list[int]:
        return [len(x) for x in self.encodings["input_ids"]]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: v[i] for k, v in self.encodings.items()}
        if self.labels is not None:
            item["label"] = self.labels[i]
        return item


@dataclass
class _Split:
    texts: list[str]
    labels: list[int] | None  # class ids; None for an unlabelled predict file
    pairs: list[str] | None = None


# ------------------------------------------------------------------------------------ datamodule
class TextClassificationDataModule(pl.LightningDataModule):
    """Sentence classification data for :class:`~lightning_topo.models.SequenceClassifier`.

    Where the rows come from (first match wins):

    1. ``train_file`` + ``val_file`` (+ optional ``test_file``): one file per split.
    2. ``data_file``: one file, split by ``split_column`` when given (values ``train``/``val``/
       ``test``; ``validation``/``dev`` also accepted), else by the seeded stratified rule
       :func:`lightning_topo.data.stratified_split` with ``(1 - val_fraction - test_fraction,
       val_fraction, test_fraction)`` and ``seed``.
    3. Nothing given: the embedded Rotten Tomatoes dataset (10,568 sentences, binary, fixed
       80/10/10 split stored in the file; labels ``negative``/``positive``).

    Files are CSV, TSV (with a header) or JSONL, optionally ``.gz``. Labels are integers
    (``num_classes = max + 1``) or strings (mapped to ids in sorted order, or in the order of
    ``label_names``). Text is tokenised once in :meth:`setup` with the model's ``AutoTokenizer``
    (truncation to ``max_length``) and padded per batch.

    Batches are dicts: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer
    makes them) of shape ``(batch, seq)``, ``labels`` ``(batch,)`` int64.

    Args:
        data_file: one file to split (see above).
        train_file: training file; needs ``val_file``.
        val_file: validation file.
        test_file: test file (optional).
        predict_file: file for ``predict`` (only ``text_column`` needed); default: the test split.
        text_column: column holding the text. Default ``"text"``.
        text_pair_column: optional second text column (sentence pairs, e.g. NLI).
        label_column: column holding the label. Default ``"label"``.
        split_column: column naming each row's split in ``data_file``.
        label_names: names of the classes in id order; for string labels this also fixes the ids.
        tokenizer_name_or_path: tokenizer directory or hub id; ``None`` = the embedded MiniLM.
            The CLI links it to ``model.model_name_or_path``.
        max_length: truncation length in tokens (``>= 2``). Default 128.
        batch_size: training batch size. Default 32.
        eval_batch_size: batch size of val/test/predict; default ``2 * batch_size``.
        limit: keep at most this many rows per split (a stratified, seeded subset): an int for
            every split, or a mapping such as ``{"train": 2000, "val": 500}``.
        val_fraction: share of ``data_file`` for validation when it is split by rule. Default 0.1.
        test_fraction: share for test (may be 0). Default 0.1.
        seed: seed of the split rule, of ``limit`` and of the training shuffle. Default 42.
        num_workers: DataLoader workers. Default 0.
        group_by_length: batch examples of similar length (training: :class:`LengthGroupedSampler`;
            val/test: longest first) to cut padding; about 1.5x faster on CPU. Default ``True``.

    Raises:
        FileNotFoundError: a given file does not exist.
        ValueError: a missing column (the message lists the existing ones), an empty split, fewer
            than two classes, an unknown label in val/test, or bad arguments.
        TypeError: labels that are neither integers nor strings.

    Example::

        dm = TextClassificationDataModule(limit={"train": 2000}, max_length=64)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))  # {"input_ids": (32, seq), ..., "labels": (32,)}
    """

    def __init__(
        self,
        data_file: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        split_column: str | None = None,
        label_names: list[str] | None = None,
        tokenizer_name_or_path: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        limit: int | dict[str, int] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 42,
        num_workers: int = 0,
        group_by_length: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2; got {max_length}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch sizes must be >= 1; got batch_size={batch_size}, eval_batch_size={eval_batch_size}")
        if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"need 0 < val_fraction, 0 <= test_fraction and val_fraction + test_fraction < 1; "
                f"got val_fraction={val_fraction}, test_fraction={test_fraction}"
            )
        self.limits = self._parse_limit(limit)
        if train_file is not None and val_file is None:
            raise ValueError("train_file needs val_file as well; or pass data_file=... to split one file by rule")
        if train_file is None and (val_file is not None or test_file is not None):
            raise ValueError("val_file/test_file need train_file; or pass data_file=... to split one file by rule")
        if train_file is not None and data_file is not None:
            raise ValueError("pass either data_file or train_file/val_file/test_file, not both")
        self.embedded = data_file is None and train_file is None
        if self.embedded:
            data_file = str(rotten_tomatoes_path())
            split_column = split_column or "split"
            label_names = label_names or list(ROTTEN_TOMATOES_LABEL_NAMES)
        for name, f in (("data_file", data_file), ("train_file", train_file), ("val_file", val_file),
                        ("test_file", test_file), ("predict_file", predict_file)):
            if f is not None and not Path(f).expanduser().is_file():
                raise FileNotFoundError(f"{name} {f!r} does not exist")
        self.data_file, self.train_file, self.val_file, self.test_file = data_file, train_file, val_file, test_file
        self.predict_file = predict_file
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.split_column = split_column
        self.label_names = list(label_names) if label_names is not None else None
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or 2 * batch_size)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.group_by_length = bool(group_by_length)
        self._splits: dict[str, _Split] | None = None
        self._id2label: dict[int, str] | None = None
        self._tokenizer: Any = None
        self._datasets: dict[str, _TokenisedSplit] = {}

    # ------------------------------------------------------------------ public metadata
    @property
    def num_classes(self) -> int:
        """Number of classes (reads the files on first access)."""
        return len(self.id2label)

    @property
    def id2label(self) -> dict[int, str]:
        """Class id → class name (reads the files on first access)."""
        self._load()
        assert self._id2label is not None
        return dict(self._id2label)

    @property
    def label2id(self) -> dict[str, int]:
        """Class name → class id."""
        return {v: k for k, v in self.id2label.items()}

    @property
    def tokenizer(self) -> Any:
        """The ``AutoTokenizer`` of ``tokenizer_name_or_path`` (loaded on first access)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(self.tokenizer_name_or_path))
        return self._tokenizer

    def split_texts(self, split: str) -> list[str]:
        """The (limited) texts of ``split`` (``train``/``val``/``test``/``predict``), in row order."""
        return list(self._get_split(split).texts)

    def split_labels(self, split: str) -> list[int]:
        """The class ids of ``split``, aligned with :meth:`split_texts`."""
        labels = self._get_split(split).labels
        if labels is None:
            raise ValueError(f"split {split!r} has no labels")
        return list(labels)

    def split_sizes(self) -> dict[str, int]:
        """Number of rows of each available split after ``limit``."""
        self._load()
        assert self._splits is not None
        return {k: len(v.texts) for k, v in self._splits.items()}

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Read, check and tokenise the splits that ``stage`` needs (all when ``None``)."""
        self._load()
        needed = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("predict",),
            None: ("train", "val", "test"),
        }.get(stage, ("train", "val", "test"))
        for split in needed:
            self._dataset(split)

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of ``batch_size`` from the train split (seeded by ``seed``)."""
        return self.dataloader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Batches of ``eval_batch_size`` from the val split, in order."""
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        """Batches of ``eval_batch_size`` from the test split, in order."""
        return self.dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        """Batches from ``predict_file``, or from the test split when none was given."""
        return self.dataloader("predict")

    def dataloader(self, split: str, batch_size: int | None = None, shuffle: bool = False) -> DataLoader:
        """A DataLoader over any split, e.g. for calibration or for collecting hidden states.

        Args:
            split: ``train``, ``val``, ``test`` or ``predict``.
            batch_size: default ``batch_size`` for train, ``eval_batch_size`` otherwise.
            shuffle: random order from a generator seeded by ``seed`` (length-grouped when
                ``group_by_length``).

        Without ``shuffle``, ``val``/``test`` batches come longest-first when ``group_by_length``
        (so batch ``i`` is not rows ``i*B..``); ``train``/``predict`` keep row order.
        """
        dataset = self._dataset(split)
        if batch_size is None:
            batch_size = self.batch_size if split == "train" else self.eval_batch_size
        sampler: Sampler[int] | None = None
        if shuffle and self.group_by_length:
            sampler = LengthGroupedSampler(
                dataset.lengths(), batch_size, generator=torch.Generator().manual_seed(self.seed)
            )
        elif shuffle:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(self.seed))
        elif self.group_by_length and split in ("val", "test"):
            # Sorted by length: far less padding; metrics do not depend on the order.
            lengths = dataset.lengths()
            sampler = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # type: ignore[assignment]
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=PadCollator(self.tokenizer.pad_token_id or 0),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _parse_limit(limit: int | Mapping[str, int] | None) -> dict[str, int]:
        if limit is None:
            return {}
        if isinstance(limit, bool):
            raise TypeError(f"limit must be an int or a mapping split -> int; got {limit!r}")
        if isinstance(limit, int):
            limits = {s: limit for s in (*SPLIT_NAMES, "predict")}
        elif isinstance(limit, Mapping):
            unknown = set(limit) - {*SPLIT_NAMES, "predict"}
            if unknown:
                raise ValueError(f"limit has unknown splits {sorted(unknown)}; use train, val, test, predict")
            limits = {k: int(v) for k, v in limit.items() if v is not None}
        else:
            raise TypeError(f"limit must be an int or a mapping split -> int; got {type(limit).__name__}")
        bad = {k: v for k, v in limits.items() if v < 1}
        if bad:
            raise ValueError(f"limit values must be >= 1; got {bad}")
        return limits

    def _columns_check(self, columns: list[str], where: str, need_label: bool = True) -> None:
        required = [self.text_column]
        if self.text_pair_column:
            required.append(self.text_pair_column)
        if need_label:
            required.append(self.label_column)
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(
                f"{where}: missing column(s) {missing}; the file has columns {columns}. "
                "Set text_column=/label_column= to the right names"
            )

    def _load(self) -> None:
        if self._splits is not None:
            return
        raw: dict[str, list[dict[str, Any]]] = {}
        if self.train_file is not None:
            for split, f in (("train", self.train_file), ("val", self.val_file), ("test", self.test_file)):
                if f is None:
                    continue
                rows, columns = read_table(f)
                self._columns_check(columns, f"{split} file {f!r}")
                raw[split] = rows
        else:
            assert self.data_file is not None
            where = "embedded dataset" if self.embedded else f"data_file {self.data_file!r}"
            rows, columns = read_table(self.data_file)
            self._columns_check(columns, where)
            if not rows:
                raise ValueError(f"{where} has no rows")
            if self.split_column is not None:
                if self.split_column not in columns:
                    raise ValueError(
                        f"{where}: missing split column {self.split_column!r}; the file has columns {columns}"
                    )
                alias = {a: s for s, names in SPLIT_ALIASES.items() for a in names}
                raw = {"train": [], "val": [], "test": []}
                for i, row in enumerate(rows):
                    value = str(row.get(self.split_column) or "").strip().lower()
                    if value not in alias:
                        raise ValueError(
                            f"{where}: row {i + 1} has {self.split_column}={row.get(self.split_column)!r}; "
                            f"expected one of {sorted(alias)}"
                        )
                    raw[alias[value]].append(row)
                if not raw["test"]:
                    del raw["test"]
            else:
                labels, _ = _normalise_labels([r.get(self.label_column) for r in rows], where)
                fractions = [1.0 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction]
                parts = stratified_split(labels, fractions, seed=self.seed)
                raw = {name: [rows[i] for i in part] for name, part in zip(SPLIT_NAMES, parts, strict=True)}
                if self.test_fraction == 0:
                    del raw["test"]

        for split in ("train", "val"):
            if not raw.get(split):
                raise ValueError(
                    f"the {split} split is empty; give it rows (check {self.split_column or 'the file'}, "
                    "val_fraction and the size of the data)"
                )
        if "test" in raw and not raw["test"]:
            raise ValueError("the test split is empty; give test rows or set test_fraction=0 / drop test_file")

        normalised = {s: _normalise_labels([r.get(self.label_column) for r in rows], f"{s} split")
                      for s, rows in raw.items()}
        kinds = {kind for _, kind in normalised.values()}
        if len(kinds) > 1:
            raise TypeError("labels are integers in one split and strings in another; use one kind")
        kind = kinds.pop()
        train_labels = normalised["train"][0]
        distinct = sorted(set(train_labels))
        if len(distinct) < 2:
            raise ValueError(
                f"classification needs at least 2 classes; the train split has labels with "
                f"{len(distinct)} distinct value ({distinct[0]!r})"
            )
        if kind == "int":
            all_ints = [v for labels, _ in normalised.values() for v in labels]
            if min(all_ints) < 0:
                raise ValueError(f"integer labels must be >= 0; found {min(all_ints)}")
            num = max(all_ints) + 1
            if self.label_names is not None:
                if len(self.label_names) < num:
                    raise ValueError(f"label_names has {len(self.label_names)} names but labels go up to {num - 1}")
                num = len(self.label_names)
            names = self.label_names or [str(i) for i in range(num)]
            id2label = {i: str(names[i]) for i in range(num)}
            to_id = {i: i for i in range(num)}
        else:
            names = self.label_names or distinct
            to_id = {str(n): i for i, n in enumerate(names)}
            id2label = {i: str(n) for i, n in enumerate(names)}
        splits: dict[str, _Split] = {}
        for split, rows in raw.items():
            labels = normalised[split][0]
            unknown = sorted({str(v) for v in labels if v not in to_id})
            if unknown:
                raise ValueError(
                    f"{split} split has labels {unknown[:5]} that are not among the classes {list(to_id)}"
                    + ("" if self.label_names else " seen in the train split")
                )
            ids = [to_id[v] for v in labels]
            keep = list(range(len(rows)))
            if split in self.limits:
                keep = stratified_subset(ids, self.limits[split], seed=self.seed)
            splits[split] = _Split(
                texts=[self._text(rows[i], self.text_column, split, i) for i in keep],
                labels=[ids[i] for i in keep],
                pairs=[self._text(rows[i], self.text_pair_column, split, i) for i in keep]
                if self.text_pair_column else None,
            )
        if self.predict_file is not None:
            rows, columns = read_table(self.predict_file)
            self._columns_check(columns, f"predict_file {self.predict_file!r}", need_label=False)
            if not rows:
                raise ValueError(f"predict_file {self.predict_file!r} has no rows")
            if "predict" in self.limits:
                rows = rows[: self.limits["predict"]]
            predict_labels = None
            if self.label_column in columns:
                values = _normalise_labels([r.get(self.label_column) for r in rows], "predict split")[0]
                unknown = sorted({str(v) for v in values if v not in to_id})
                if unknown:
                    raise ValueError(f"predict split has labels {unknown[:5]} that are not among the classes {list(to_id)}")
                predict_labels = [to_id[v] for v in values]
            splits["predict"] = _Split(
                texts=[self._text(r, self.text_column, "predict", i) for i, r in enumerate(rows)],
                labels=predict_labels,
                pairs=[self._text(r, self.text_pair_column, "predict", i) for i, r in enumerate(rows)]
                if self.text_pair_column else None,
            )
        self._splits = splits
        self._id2label = id2label

    @staticmethod
    def _text(row: Mapping[str, Any], column: str | None, split: str, i: int) -> str:
        value = row.get(column) if column else None
        if not isinstance(value, str):
            raise TypeError(f"{split} split: row {i + 1} has a non-text value in column {column!r}: {value!r}")
        return value

    def _get_split(self, split: str) -> _Split:
        self._load()
        assert self._splits is not None
        if split == "predict" and "predict" not in self._splits:
            split = "test"
        if split not in self._splits:
            raise ValueError(
                f"no {split!r} split: available are {sorted(self._splits)}"
                + (" (give test_file, or test_fraction > 0)" if split == "test" else "")
            )
        return self._splits[split]

    def _dataset(self, split: str) -> _TokenisedSplit:
        if split not in self._datasets:
            data = self._get_split(split)
            args = (data.texts, data.pairs) if data.pairs is not None else (data.texts,)
            enc = self.tokenizer(*args, truncation=True, max_length=self.max_length)
            keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
            self._datasets[split] = _TokenisedSplit({k: enc[k] for k in keys}, data.labels)
        return self._datasets[split]
