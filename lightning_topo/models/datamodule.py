"""``TextClassificationDataModule``: text files (or the embedded dataset) → padded token batches."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from lightning_topo.data import (
    ROTTEN_TOMATOES_LABEL_NAMES,
    SPLIT_NAMES,
    rotten_tomatoes_path,
    stratified_split,
    stratified_subset,
)
from lightning_topo.data.files import (
    SPLIT_ALIASES,
    check_columns,
    check_file,
    label_ids,
    normalise_labels,
    read_table,
    rows_by_split,
)
from lightning_topo.data.sampling import LengthGroupedSampler
from lightning_topo.loading import check_model_folder, load_tokenizer
from lightning_topo.models.embedded import resolve_model_path
from lightning_topo.scores.checks import check_text

__all__ = ["TextClassificationDataModule"]


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


# ------------------------------------------------------------------------------ argument checks
#: Default of ``min_class_examples``: fewer labelled rows than this make a class suspect.
MIN_CLASS_EXAMPLES = 5


def _int_arg(name: str, value: Any, minimum: int, allow_none: bool = False) -> int | None:
    """``value`` if it is an int ``>= minimum`` (bools refused), else a clear error naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        why = " (it fixes the split, the limit subset and the shuffle)" if name == "seed" else ""
        raise TypeError(f"{name} must be an int{why}; got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def _float_arg(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number; got {type(value).__name__} {value!r}")
    return float(value)




def _tokenizer_arg(value: Any) -> str | None:
    if value is None or isinstance(value, str | os.PathLike):
        return None if value is None else os.fspath(value)
    raise TypeError(
        f"tokenizer_name_or_path must be a local directory or hub id (str) or None (the embedded MiniLM); "
        f"got {type(value).__name__}. For a tokenizer object, save it with tokenizer.save_pretrained(dir) "
        "and pass that dir"
    )


def _parse_limit(limit: int | Mapping[str, int] | None) -> dict[str, int]:
    if limit is None:
        return {}
    splits = (*SPLIT_NAMES, "predict")
    if isinstance(limit, Mapping):
        unknown = set(limit) - set(splits)
        if unknown:
            raise ValueError(f"limit has unknown splits {sorted(unknown)}; use train, val, test, predict")
        return {k: _int_arg(f"limit[{k!r}]", v, 1) for k, v in limit.items() if v is not None}
    return {s: _int_arg("limit", limit, 1) for s in splits}


def _is_hf_dataset(value: Any) -> bool:
    """A Hugging Face ``datasets.Dataset`` or ``DatasetDict`` (by type name, without importing datasets)."""
    return type(value).__name__ in ("Dataset", "DatasetDict") and hasattr(value, "column_names")


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

    Files are UTF-8 CSV, TSV (with a header) or JSONL, optionally ``.gz``
    (:func:`lightning_topo.data.read_table`). Labels are integers (``num_classes = max + 1``) or
    strings (mapped to ids in sorted order, or in the order of ``label_names``). Text is tokenised
    once in :meth:`setup` with the model's ``AutoTokenizer`` (truncation to ``max_length``) and
    padded per batch by transformers' ``DataCollatorWithPadding``.

    Batches are mappings: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the
    tokenizer makes them) of shape ``(batch, seq)``, ``labels`` ``(batch,)``, all int64.

    Under DDP the training batches keep their length grouping: the train sampler is a
    :class:`~lightning_topo.data.LengthGroupedSampler` sharded by the trainer's
    ``distributed_sampler_kwargs`` (world size and global rank), which Lightning keeps as is.

    Args:
        data_file: one file to split (see above), or a Hugging Face ``datasets.Dataset`` (split by
            the same rule) or ``DatasetDict`` (its ``train``, ``validation``/``val``/``dev`` and
            ``test`` splits; without a validation split ``train`` is split by rule). Install the
            ``datasets`` extra. A ``ClassLabel`` label column gives the class names.
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
        max_length: truncation length in tokens (int ``>= 2``). Default 128.
        batch_size: training batch size per device (int ``>= 1``). Default 32.
        eval_batch_size: batch size of val/test/predict; default ``2 * batch_size``.
        limit: keep at most this many rows per split (a stratified, seeded subset): an int for
            every split, or a mapping such as ``{"train": 2000, "val": 500}``.
        val_fraction: share of ``data_file`` for validation when it is split by rule. Default 0.1.
        test_fraction: share for test (may be 0). Default 0.1.
        seed: int seed of the split rule, of ``limit`` and of the training order (``None`` is
            refused: a resumed run must see the same split). Default 42.
        num_workers: DataLoader workers. Default 0.
        group_by_length: batch examples of similar length (training: :class:`LengthGroupedSampler`;
            val/test: longest first) to cut padding; about 1.5x faster on CPU. Default ``True``.
        min_class_examples: a class with fewer labelled rows than this (all splits together) is
            refused, naming it: such a class is most often a typo (``Pos`` beside ``pos``) or a
            fragment of a text shifted into the label column. Default 5; ``1`` accepts any class.
            The classes found and their row counts are logged (INFO) when the data is read.

    Raises:
        FileNotFoundError: a given file does not exist.
        IsADirectoryError: a given file is a folder.
        TypeError: an argument of the wrong type (e.g. ``seed=None``, ``batch_size="32"``, a
            tokenizer object), or labels that are neither integers nor strings.
        ValueError: a missing column (the message names the argument and lists the existing
            columns), a file that is not UTF-8 (with the byte offset and line), an empty split,
            fewer than two classes, an unknown label in val/test, or an out-of-range argument.

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
        min_class_examples: int = MIN_CLASS_EXAMPLES,
    ) -> None:
        super().__init__()
        # Paths are saved as strings: checkpoints stay loadable with torch.load(weights_only=True).
        data_file, train_file, val_file, test_file, predict_file = (
            os.fspath(f) if isinstance(f, os.PathLike) else f
            for f in (data_file, train_file, val_file, test_file, predict_file)
        )
        if isinstance(tokenizer_name_or_path, os.PathLike):
            tokenizer_name_or_path = os.fspath(tokenizer_name_or_path)
        #: A Hugging Face ``datasets.Dataset`` / ``DatasetDict`` given as ``data_file`` (else ``None``).
        self.dataset: Any = data_file if _is_hf_dataset(data_file) else None
        if self.dataset is not None:
            data_file = None
            self.save_hyperparameters(ignore=["data_file"])  # a Dataset is not a checkpoint value
        else:
            self.save_hyperparameters()
        self.max_length = _int_arg("max_length", max_length, 2)
        self.batch_size = _int_arg("batch_size", batch_size, 1)
        self.eval_batch_size = (
            _int_arg("eval_batch_size", eval_batch_size, 1, allow_none=True) or 2 * batch_size
        )
        self.seed = _int_arg("seed", seed, 0)
        self.num_workers = _int_arg("num_workers", num_workers, 0)
        self.val_fraction, self.test_fraction = (
            _float_arg("val_fraction", val_fraction),
            _float_arg("test_fraction", test_fraction),
        )
        if not (
            0 < self.val_fraction < 1
            and 0 <= self.test_fraction < 1
            and self.val_fraction + self.test_fraction < 1
        ):
            raise ValueError(
                f"need 0 < val_fraction, 0 <= test_fraction and val_fraction + test_fraction < 1; "
                f"got val_fraction={val_fraction}, test_fraction={test_fraction}"
            )
        self.limits = _parse_limit(limit)
        self.text_column = check_text(text_column, "text_column")
        self.label_column = check_text(label_column, "label_column")
        self.text_pair_column = check_text(text_pair_column, "text_pair_column", allow_none=True)
        self.split_column = check_text(split_column, "split_column", allow_none=True)
        if label_names is not None and (
            isinstance(label_names, str) or not isinstance(label_names, Sequence)
        ):
            raise TypeError(
                f"label_names must be a list of class names; got {type(label_names).__name__} {label_names!r}"
            )
        self.label_names = [str(n) for n in label_names] if label_names is not None else None
        self.tokenizer_name_or_path = _tokenizer_arg(tokenizer_name_or_path)
        self._set_files(data_file, train_file, val_file, test_file, predict_file)
        self.group_by_length = bool(group_by_length)
        self.min_class_examples = _int_arg("min_class_examples", min_class_examples, 1)
        self._splits: dict[str, _Split] | None = None
        self._id2label: dict[int, str] | None = None
        self._tokenizer: Any = None
        self._datasets: dict[str, _TokenisedSplit] = {}

    def _set_files(
        self, data_file: Any, train_file: Any, val_file: Any, test_file: Any, predict_file: Any
    ) -> None:
        files = {
            "data_file": data_file,
            "train_file": train_file,
            "val_file": val_file,
            "test_file": test_file,
            "predict_file": predict_file,
        }
        files = {name: check_text(f, name, allow_none=True, path=True) for name, f in files.items()}
        if files["train_file"] is not None and files["val_file"] is None:
            raise ValueError(
                "train_file needs val_file as well; or pass data_file=... to split one file by rule"
            )
        if files["train_file"] is None and (files["val_file"] is not None or files["test_file"] is not None):
            raise ValueError(
                "val_file/test_file need train_file; or pass data_file=... to split one file by rule"
            )
        if files["train_file"] is not None and files["data_file"] is not None:
            raise ValueError("pass either data_file or train_file/val_file/test_file, not both")
        self.embedded = files["data_file"] is None and files["train_file"] is None and self.dataset is None
        if self.embedded:
            files["data_file"] = str(rotten_tomatoes_path())
            self.split_column = self.split_column or "split"
            self.label_names = self.label_names or list(ROTTEN_TOMATOES_LABEL_NAMES)
        for name, f in files.items():
            if f is not None:
                check_file(f, name)
        self.data_file, self.train_file, self.val_file = (
            files["data_file"],
            files["train_file"],
            files["val_file"],
        )
        self.test_file, self.predict_file = files["test_file"], files["predict_file"]

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
        """The ``AutoTokenizer`` of ``tokenizer_name_or_path`` (loaded on first access).

        Raises:
            OSError: the tokenizer cannot be loaded (the message names ``tokenizer_name_or_path``).
        """
        if self._tokenizer is None:
            path = resolve_model_path(self.tokenizer_name_or_path)
            check_model_folder(path)  # a refused folder (code in it) is a ValueError, not an OSError
            try:
                self._tokenizer = load_tokenizer(path)
            except (OSError, ValueError) as err:
                raise OSError(
                    f"tokenizer_name_or_path {path!r} could not be loaded as a tokenizer: {err}. Pass a folder "
                    "saved with tokenizer.save_pretrained(...) or the model's folder"
                ) from err
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
        """Shuffled, length-grouped batches of ``batch_size`` from the train split (seeded by ``seed``)."""
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
            shuffle: random order seeded by ``seed`` (length-grouped and sharded over the
                trainer's ranks when ``group_by_length``).

        Without ``shuffle``, ``val``/``test`` batches come longest-first when ``group_by_length``
        (so batch ``i`` is not rows ``i*B..``); ``train``/``predict`` keep row order.
        """
        from transformers import DataCollatorWithPadding

        dataset = self._dataset(split)
        if batch_size is None:
            batch_size = self.batch_size if split == "train" else self.eval_batch_size
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self._sampler(split, dataset, batch_size, shuffle),
            collate_fn=DataCollatorWithPadding(self.tokenizer, return_tensors="pt"),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _sampler(self, split: str, dataset: _TokenisedSplit, batch_size: int, shuffle: bool) -> Any:
        """The sampler of :meth:`dataloader` (``None`` = row order)."""
        if shuffle and self.group_by_length:
            trainer = self.trainer
            ranks = (trainer.distributed_sampler_kwargs if trainer is not None else None) or {}
            return LengthGroupedSampler(
                dataset.lengths(),
                batch_size,
                seed=self.seed,
                num_replicas=int(ranks.get("num_replicas", 1)),
                rank=int(ranks.get("rank", 0)),
            )
        if shuffle:  # Lightning swaps it for a shuffling DistributedSampler under DDP
            return RandomSampler(dataset, generator=torch.Generator().manual_seed(self.seed))
        if self.group_by_length and split in ("val", "test"):
            # Sorted by length: far less padding; metrics do not depend on the order. Under DDP
            # Lightning wraps this order in a DistributedSamplerWrapper, which keeps it.
            lengths = dataset.lengths()
            order: Sampler[int] | list[int] = sorted(range(len(lengths)), key=lambda i: -lengths[i])
            return order
        return None

    # ------------------------------------------------------------------ reading
    def _where(self) -> str:
        if self.dataset is not None:
            return f"data_file ({type(self.dataset).__name__})"
        return "embedded dataset" if self.embedded else f"data_file {self.data_file!r}"

    def _hf_dataset_rows(self) -> tuple[dict[str, list[dict[str, Any]]] | None, list[dict[str, Any]] | None]:
        """``(rows per split, None)`` of a ``DatasetDict``, or ``(None, rows)`` of one ``Dataset`` (split by rule).

        Split names: ``train``; ``validation``/``val``/``dev`` -> val; ``test``. A ``ClassLabel`` label
        feature gives ``label_names`` when none were passed.
        """
        where = self._where()
        required = self._required()
        columns = [c for c in required.values() if c is not None]

        def rows_of(ds: Any, name: str) -> list[dict[str, Any]]:
            check_columns(list(ds.column_names), required, f"{where} split {name!r}")
            feature = getattr(ds, "features", {}).get(self.label_column)
            if self.label_names is None and getattr(feature, "names", None):
                self.label_names = [str(n) for n in feature.names]
            return ds.select_columns(columns).to_list()

        if not isinstance(self.dataset, Mapping):
            return None, rows_of(self.dataset, "(all)")
        alias = {a: s for s, names in SPLIT_ALIASES.items() for a in names}
        raw: dict[str, list[dict[str, Any]]] = {}
        for name, ds in self.dataset.items():
            split = alias.get(str(name).strip().lower())
            if split is None:
                continue  # e.g. "unsupervised": not a labelled split
            raw[split] = rows_of(ds, name)
        if "train" not in raw:
            raise ValueError(f"{where} has no 'train' split; it has {sorted(self.dataset)}")
        if "val" not in raw:
            return None, raw["train"] + raw.get("test", [])
        return raw, None

    def _required(self, need_label: bool = True) -> dict[str, str | None]:
        return {
            "text_column": self.text_column,
            "text_pair_column": self.text_pair_column,
            "label_column": self.label_column if need_label else None,
        }

    def _read_raw(self) -> dict[str, list[dict[str, Any]]]:
        """Rows of each labelled split, before labels are checked."""
        if self.train_file is not None:
            raw = {}
            for split, f in (("train", self.train_file), ("val", self.val_file), ("test", self.test_file)):
                if f is not None:
                    rows, columns = read_table(f, f"{split}_file")
                    check_columns(columns, self._required(), f"{split}_file {f!r}")
                    raw[split] = rows
            return raw
        where = self._where()
        if self.dataset is not None:
            by_split, rows = self._hf_dataset_rows()
            if by_split is not None:
                return by_split
            columns = list(rows[0]) if rows else []
        else:
            rows, columns = read_table(self.data_file, "data_file")
            check_columns(columns, self._required(), where)
        if not rows:
            raise ValueError(f"{where} has no rows")
        if self.split_column is not None:
            if self.split_column not in columns:
                raise ValueError(
                    f"{where}: missing split column {self.split_column!r} (split_column=); the file has "
                    f"columns {columns}"
                )
            return rows_by_split(rows, self.split_column, where)
        labels, _ = normalise_labels([r.get(self.label_column) for r in rows], where)
        fractions = [1.0 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction]
        parts = stratified_split(labels, fractions, seed=self.seed)
        raw = {name: [rows[i] for i in part] for name, part in zip(SPLIT_NAMES, parts, strict=True)}
        if self.test_fraction == 0:
            del raw["test"]
        return raw

    def _load(self) -> None:
        if self._splits is not None:
            return
        raw = self._read_raw()
        for split in ("train", "val"):
            if not raw.get(split):
                raise ValueError(
                    f"the {split} split is empty; give it rows (check {self.split_column or 'the file'}, "
                    "val_fraction and the size of the data)"
                )
        if "test" in raw and not raw["test"]:
            raise ValueError(
                "the test split is empty; give test rows or set test_fraction=0 / drop test_file"
            )
        normalised = {
            s: normalise_labels([r.get(self.label_column) for r in rows], f"{s} split")
            for s, rows in raw.items()
        }
        kinds = {kind for _, kind in normalised.values()}
        if len(kinds) > 1:
            raise TypeError("labels are integers in one split and strings in another; use one kind")
        all_labels = [v for labels, _ in normalised.values() for v in labels]
        id2label, to_id = label_ids(normalised["train"][0], all_labels, kinds.pop(), self.label_names)
        self._check_class_sizes(all_labels)
        splits = {
            split: self._labelled_split(split, rows, normalised[split][0], to_id)
            for split, rows in raw.items()
        }
        if self.predict_file is not None:
            splits["predict"] = self._predict_split(to_id)
        self._splits = splits
        self._id2label = id2label

    def _check_class_sizes(self, labels: Sequence[Any]) -> None:
        """Log the label set with its counts; refuse classes with fewer than
        ``min_class_examples`` rows (naming them, and the label each one resembles)."""
        counts = Counter(labels)
        where = self._where() if self.train_file is None else f"train_file {self.train_file!r} (+ val/test)"
        found = ", ".join(f"{label!r}: {n}" for label, n in sorted(counts.items(), key=lambda kv: str(kv[0])))
        rank_zero_info(f"{where}: {len(counts)} classes found ({found})")
        rare = sorted((label for label, n in counts.items() if n < self.min_class_examples), key=str)
        if not rare:
            return
        hints = []
        for label in rare[:10]:
            twin = [o for o in counts if o != label and str(o).strip().lower() == str(label).strip().lower()]
            hints.append(f"{label!r} ({counts[label]} rows" + (f", like {twin[0]!r})" if twin else ")"))
        raise ValueError(
            f"{where}: class(es) {', '.join(hints)} have fewer than min_class_examples={self.min_class_examples} "
            f"labelled rows; classes found: {found}. A tiny class is usually a typo in a label or a text "
            "fragment in the label column: fix those rows, or set min_class_examples=1 to keep it"
        )

    def _class_ids(self, split: str, labels: Sequence[Any], to_id: Mapping[Any, int]) -> list[int]:
        unknown = sorted({str(v) for v in labels if v not in to_id})
        if unknown:
            raise ValueError(
                f"{split} split has labels {unknown[:5]} that are not among the classes {list(to_id)}"
                + ("" if self.label_names else " seen in the train split")
            )
        return [to_id[v] for v in labels]

    def _labelled_split(
        self, split: str, rows: list[dict[str, Any]], labels: Sequence[Any], to_id: Mapping[Any, int]
    ) -> _Split:
        ids = self._class_ids(split, labels, to_id)
        keep = list(range(len(rows)))
        if split in self.limits:
            keep = stratified_subset(ids, self.limits[split], seed=self.seed)
        return _Split(
            texts=[self._text(rows[i], self.text_column, split, i) for i in keep],
            labels=[ids[i] for i in keep],
            pairs=[self._text(rows[i], self.text_pair_column, split, i) for i in keep]
            if self.text_pair_column
            else None,
        )

    def _predict_split(self, to_id: Mapping[Any, int]) -> _Split:
        where = f"predict_file {self.predict_file!r}"
        rows, columns = read_table(self.predict_file, "predict_file")
        check_columns(columns, self._required(need_label=False), where)
        if not rows:
            raise ValueError(f"{where} has no rows")
        rows = rows[: self.limits.get("predict", len(rows))]
        labels = None
        if self.label_column in columns:
            values = normalise_labels([r.get(self.label_column) for r in rows], "predict split")[0]
            labels = self._class_ids("predict", values, to_id)
        return _Split(
            texts=[self._text(r, self.text_column, "predict", i) for i, r in enumerate(rows)],
            labels=labels,
            pairs=[self._text(r, self.text_pair_column, "predict", i) for i, r in enumerate(rows)]
            if self.text_pair_column
            else None,
        )

    @staticmethod
    def _text(row: Mapping[str, Any], column: str | None, split: str, i: int) -> str:
        value = row.get(column) if column else None
        if not isinstance(value, str):
            raise TypeError(
                f"{split} split: row {i + 1} has a non-text value in column {column!r}: {value!r}"
            )
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
