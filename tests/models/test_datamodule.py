"""TextClassificationDataModule: files, splits, limits, batches and every bad input."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import lightning.pytorch as pl
import pytest
import torch

from lightning_topo.data import rotten_tomatoes_path, stratified_split, stratified_subset
from lightning_topo.models import TextClassificationDataModule

from ._toy import toy_rows, write_csv


def make(tiny_model_dir, **kwargs) -> TextClassificationDataModule:
    kwargs.setdefault("text_column", "sentence")
    kwargs.setdefault("label_column", "target")
    return TextClassificationDataModule(tokenizer_name_or_path=str(tiny_model_dir), **kwargs)


# ----------------------------------------------------------------------------- split rule
def test_stratified_split_covers_all_rows_and_keeps_proportions():
    labels = [0] * 70 + [1] * 30
    parts = stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    assert sorted(i for p in parts for i in p) == list(range(100))
    assert [len(p) for p in parts] == [80, 10, 10]
    for part in parts:
        c = Counter(labels[i] for i in part)
        assert c[0] / len(part) == pytest.approx(0.7, abs=0.06)
    assert parts == stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    assert parts != stratified_split(labels, (0.8, 0.1, 0.1), seed=4)
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(labels, (0.5, 0.1))


def test_stratified_subset_sizes():
    labels = ["a"] * 60 + ["b"] * 40
    sub = stratified_subset(labels, 10, seed=0)
    assert len(sub) == len(set(sub)) == 10
    assert Counter(labels[i] for i in sub) == {"a": 6, "b": 4}
    assert stratified_subset(labels, 500) == list(range(100))


# ----------------------------------------------------------------------------- one file
def test_csv_split_sizes_stratification_and_batches(tiny_model_dir, toy_csv):
    dm = make(tiny_model_dir, data_file=str(toy_csv), batch_size=16, max_length=8)
    assert dm.num_classes == 2
    assert dm.id2label == {0: "0", 1: "1"}
    assert dm.split_sizes() == {"train": 160, "val": 20, "test": 20}
    for split in ("train", "val", "test"):
        counts = Counter(dm.split_labels(split))
        assert counts[0] == counts[1]  # 100/100 classes split evenly
    all_texts = dm.split_texts("train") + dm.split_texts("val") + dm.split_texts("test")
    # the three splits are the file's rows, each exactly once (compare as multisets: texts may repeat)
    assert Counter(all_texts) == Counter(r["sentence"] for r in toy_rows())
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape[0] == 16 and batch["input_ids"].shape[1] <= 8
    assert batch["labels"].dtype == torch.int64 and batch["input_ids"].dtype == torch.int64
    assert batch["attention_mask"].shape == batch["input_ids"].shape
    # dynamic padding: the longest row of the batch has no padding
    assert batch["attention_mask"].sum(1).max() == batch["input_ids"].shape[1]
    val = next(iter(dm.val_dataloader()))
    assert val["input_ids"].shape[0] == 20  # eval_batch_size = 2 * batch_size


def test_split_is_deterministic_under_seed(tiny_model_dir, toy_csv):
    a = make(tiny_model_dir, data_file=str(toy_csv), seed=1)
    b = make(tiny_model_dir, data_file=str(toy_csv), seed=1)
    c = make(tiny_model_dir, data_file=str(toy_csv), seed=2)
    assert a.split_texts("val") == b.split_texts("val")
    assert a.split_texts("val") != c.split_texts("val")
    a.setup("fit")
    b.setup("fit")
    first_a = next(iter(a.train_dataloader()))["input_ids"]
    first_b = next(iter(b.train_dataloader()))["input_ids"]
    assert torch.equal(first_a, first_b)


def test_limit_per_split_and_for_all(tiny_model_dir, toy_csv):
    dm = make(tiny_model_dir, data_file=str(toy_csv), limit={"train": 40, "val": 10})
    assert dm.split_sizes() == {"train": 40, "val": 10, "test": 20}
    assert Counter(dm.split_labels("train")) == {0: 20, 1: 20}
    dm = make(tiny_model_dir, data_file=str(toy_csv), limit=6)
    assert dm.split_sizes() == {"train": 6, "val": 6, "test": 6}


def test_string_labels_tsv_jsonl_and_split_files(tiny_model_dir, tmp_path):
    rows = toy_rows(60, string_labels=True)
    tsv = write_csv(tmp_path / "d.tsv", rows, delimiter="\t")
    dm = make(tiny_model_dir, data_file=str(tsv), test_fraction=0.0)
    assert dm.id2label == {0: "neg", 1: "pos"}
    assert set(dm.split_sizes()) == {"train", "val"}
    with pytest.raises(ValueError, match="no 'test' split"):
        dm.test_dataloader()
    jl = tmp_path / "d.jsonl.gz"
    with gzip.open(jl, "wt") as fh:
        for r in rows:
            fh.write(json.dumps({"sentence": r["sentence"], "target": int(r["id"]) % 3}) + "\n")
    dm = make(tiny_model_dir, data_file=str(jl))
    assert dm.num_classes == 3
    dm = make(tiny_model_dir, data_file=str(tsv), label_names=["pos", "neg"])
    assert dm.label2id == {"pos": 0, "neg": 1}
    train = write_csv(tmp_path / "train.csv", rows[:40])
    val = write_csv(tmp_path / "val.csv", rows[40:])
    dm = make(tiny_model_dir, train_file=str(train), val_file=str(val))
    assert dm.split_sizes() == {"train": 40, "val": 20}
    dm.setup("validate")
    assert len(dm.val_dataloader().dataset) == 20


def test_split_column_and_predict_file(tiny_model_dir, tmp_path):
    rows = toy_rows(30)
    for i, r in enumerate(rows):
        r["part"] = ["train", "train", "dev", "test", "train"][i % 5]
    f = write_csv(tmp_path / "d.csv", rows)
    dm = make(tiny_model_dir, data_file=str(f), split_column="part")
    assert dm.split_sizes() == {"train": 18, "val": 6, "test": 6}
    pred = write_csv(tmp_path / "p.csv", [{"sentence": "good movie"}, {"sentence": "bad plot"}])
    dm = make(tiny_model_dir, data_file=str(f), split_column="part", predict_file=str(pred))
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["input_ids"].shape[0] == 2 and "labels" not in batch


# ----------------------------------------------------------------------------- embedded data
def test_embedded_dataset_splits():
    path = rotten_tomatoes_path()
    assert path.name == "rotten_tomatoes.tsv.gz"
    dm = TextClassificationDataModule.__new__(TextClassificationDataModule)  # no tokenizer needed
    TextClassificationDataModule.__init__(dm)
    assert dm.embedded and dm.id2label == {0: "negative", 1: "positive"}
    sizes = dm.split_sizes()
    assert sizes == {"train": 8455, "val": 1057, "test": 1056}
    for split in sizes:
        share = sum(dm.split_labels(split)) / sizes[split]
        assert share == pytest.approx(5242 / 10568, abs=0.01)
    texts = [set(dm.split_texts(s)) for s in sizes]
    assert not (texts[0] & texts[1]) or len(texts[0] & texts[1]) < 5  # the source has a few duplicates
    dm2 = TextClassificationDataModule(limit={"train": 500}, seed=7)
    assert dm2.split_sizes()["train"] == 500
    assert dm2.split_texts("val") == dm.split_texts("val")  # fixed split, independent of seed
    assert abs(sum(dm2.split_labels("train")) - 500 * 5242 / 10568) <= 1


# ----------------------------------------------------------------------------- bad input
def test_missing_file(tiny_model_dir, toy_csv, tmp_path):
    with pytest.raises(FileNotFoundError, match="data_file .*nope.csv' does not exist"):
        make(tiny_model_dir, data_file=str(tmp_path / "nope.csv"))
    with pytest.raises(IsADirectoryError, match=r"data_file .* is a directory.*\['toy.csv'\]"):
        make(tiny_model_dir, data_file=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="val_file .*y.csv' does not exist"):
        make(tiny_model_dir, train_file=str(toy_csv), val_file=str(tmp_path / "y.csv"))


def test_missing_column_names_existing_ones(tiny_model_dir, toy_csv):
    dm = make(tiny_model_dir, data_file=str(toy_csv), label_column="sentiment")
    with pytest.raises(
        ValueError, match=r"missing column\(s\) \['sentiment'\].*\['sentence', 'target', 'id'\]"
    ):
        dm.setup("fit")
    dm = make(tiny_model_dir, data_file=str(toy_csv), split_column="part")
    with pytest.raises(ValueError, match="missing split column 'part'"):
        _ = dm.num_classes


def test_empty_split(tiny_model_dir, tmp_path):
    rows = toy_rows(20)
    for r in rows:
        r["part"] = "train"
    f = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(ValueError, match="val split is empty"):
        make(tiny_model_dir, data_file=str(f), split_column="part").setup("fit")
    header_only = tmp_path / "empty.csv"
    header_only.write_text("sentence,target\n")
    with pytest.raises(ValueError, match="has no rows"):
        make(tiny_model_dir, data_file=str(header_only)).setup("fit")


def test_single_class(tiny_model_dir, tmp_path):
    rows = [r for r in toy_rows(60) if r["target"] == "1"]
    f = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(ValueError, match="at least 2 classes"):
        make(tiny_model_dir, data_file=str(f)).setup("fit")


def test_bad_label_types(tiny_model_dir, tmp_path):
    rows = toy_rows(40)
    for i, r in enumerate(rows):
        r["target"] = str(0.25 + (i % 2) * 0.5)
    f = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(TypeError, match="integers or strings"):
        make(tiny_model_dir, data_file=str(f)).setup("fit")
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"sentence": "good", "target": [i % 2]}) for i in range(20)))
    with pytest.raises(TypeError, match="integers or strings"):
        make(tiny_model_dir, data_file=str(jl)).setup("fit")
    jl.write_text("\n".join(json.dumps({"sentence": "good", "target": bool(i % 2)}) for i in range(20)))
    with pytest.raises(TypeError, match="bool"):
        make(tiny_model_dir, data_file=str(jl)).setup("fit")


def test_unknown_label_in_val_and_bad_arguments(tiny_model_dir, tmp_path):
    rows = toy_rows(40, string_labels=True)
    train = write_csv(tmp_path / "train.csv", rows)
    val_rows = [dict(r, target="meh") for r in rows[:5]]
    val = write_csv(tmp_path / "val.csv", val_rows)
    with pytest.raises(ValueError, match=r"val split has labels \['meh'\]"):
        make(tiny_model_dir, train_file=str(train), val_file=str(val)).setup("fit")
    with pytest.raises(ValueError, match="needs val_file"):
        make(tiny_model_dir, train_file=str(train))
    with pytest.raises(ValueError, match="not both"):
        make(tiny_model_dir, train_file=str(train), val_file=str(val), data_file=str(train))
    with pytest.raises(ValueError, match="max_length"):
        make(tiny_model_dir, data_file=str(train), max_length=1)
    with pytest.raises(ValueError, match="unknown splits"):
        make(tiny_model_dir, data_file=str(train), limit={"training": 3})
    with pytest.raises(ValueError, match="format"):
        bad = tmp_path / "d.xlsx"
        bad.write_text("x")
        make(tiny_model_dir, data_file=str(bad)).setup("fit")


# ----------------------------------------------------------------------------- batches
def test_collator_pads_with_the_tokenizer_and_keeps_labels(tiny_model_dir, toy_csv):
    dm = make(tiny_model_dir, data_file=str(toy_csv), batch_size=16, max_length=8, group_by_length=False)
    dm.setup("fit")
    loader = dm.dataloader("val", batch_size=5)
    batch = next(iter(loader))
    enc = dm.tokenizer(dm.split_texts("val")[:5], truncation=True, max_length=8)
    width = max(len(ids) for ids in enc["input_ids"])
    assert batch["input_ids"].shape == (5, width)
    for row, ids in enumerate(enc["input_ids"]):
        assert batch["input_ids"][row, : len(ids)].tolist() == ids
        assert (batch["input_ids"][row, len(ids) :] == dm.tokenizer.pad_token_id).all()
        assert batch["attention_mask"][row].tolist() == [1] * len(ids) + [0] * (width - len(ids))
    assert batch["labels"].dtype == torch.int64
    assert batch["labels"].tolist() == dm.split_labels("val")[:5]


def test_length_grouping_cuts_padding(tiny_model_dir, tmp_path):
    rows = toy_rows(400)
    for i, r in enumerate(rows):  # very different lengths
        r["sentence"] = " ".join([r["sentence"]] * (1 + i % 6))
    f = write_csv(tmp_path / "d.csv", rows)

    def padding(group: bool) -> int:
        dm = make(tiny_model_dir, data_file=str(f), batch_size=8, max_length=64, group_by_length=group)
        dm.setup("fit")
        return sum(int((b["attention_mask"] == 0).sum()) for b in dm.train_dataloader())

    assert padding(True) < 0.5 * padding(False)


def test_train_loader_is_sharded_by_the_trainers_ranks(tiny_model_dir, toy_csv):
    """Under DDP each rank reads its own length-grouped shard (the sampler is a DistributedSampler,
    which Lightning keeps), and set_epoch changes the order."""
    from types import SimpleNamespace

    from torch.utils.data import DistributedSampler

    seen = []
    for rank in range(2):
        dm = make(tiny_model_dir, data_file=str(toy_csv), batch_size=8)
        dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank})
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, DistributedSampler)
        assert len(loader.sampler) == 80  # 160 training rows over 2 ranks
        seen.append(list(loader.sampler))
        loader.sampler.set_epoch(1)
        assert list(loader.sampler) != seen[-1]
    assert sorted(seen[0] + seen[1]) == list(range(160))


# ----------------------------------------------------------------------------- refused early (issue 12)
def test_unreadable_files_are_refused_naming_the_argument(tiny_model_dir, tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"sentence,target\n" + b"bon caf\xe9,1\n" * 4)
    dm = make(tiny_model_dir, data_file=str(latin))
    with pytest.raises(
        ValueError, match=r"data_file '.*latin.csv' is not UTF-8 text: byte 0xe9 at offset 23 \(line 2\)"
    ):
        dm.setup("fit")
    train = write_csv(tmp_path / "train.csv", toy_rows(20))
    with pytest.raises(ValueError, match="val_file '.*latin.csv' is not UTF-8"):
        make(tiny_model_dir, train_file=str(train), val_file=str(latin)).setup("fit")
    with pytest.raises(IsADirectoryError, match="predict_file '.*' is a directory"):
        make(tiny_model_dir, data_file=str(train), predict_file=str(tmp_path))


def test_missing_text_column_names_the_argument(tiny_model_dir, toy_csv):
    dm = TextClassificationDataModule(data_file=str(toy_csv), tokenizer_name_or_path=str(tiny_model_dir))
    with pytest.raises(
        ValueError, match=r"text_column='text'.*columns \['sentence', 'target', 'id'\].*Set text_column="
    ):
        dm.setup("fit")
    dm = make(tiny_model_dir, data_file=str(toy_csv), label_column="targte")
    with pytest.raises(ValueError, match=r"label_column='targte'.*did you mean 'target'"):
        _ = dm.num_classes


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"seed": None}, TypeError, r"seed must be an int \(it fixes the split.*got NoneType None"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"max_length": "64"}, TypeError, "max_length must be an int; got str '64'"),
        ({"max_length": 1}, ValueError, "max_length must be >= 2; got 1"),
        ({"batch_size": 32.0}, TypeError, "batch_size must be an int; got float 32.0"),
        ({"batch_size": True}, TypeError, "batch_size must be an int; got bool"),
        ({"eval_batch_size": 0}, ValueError, "eval_batch_size must be >= 1"),
        ({"num_workers": -1}, ValueError, "num_workers must be >= 0"),
        ({"limit": 2.5}, TypeError, "limit must be an int; got float 2.5"),
        ({"limit": {"train": 0}}, ValueError, r"limit\['train'\] must be >= 1"),
        ({"val_fraction": "0.1"}, TypeError, "val_fraction must be a number"),
        ({"val_fraction": float("nan")}, ValueError, "0 < val_fraction"),
        ({"text_column": 3}, TypeError, "text_column must be a non-empty string"),
        ({"text_column": " "}, ValueError, "text_column must be a non-empty string"),
        ({"label_names": "neg,pos"}, TypeError, "label_names must be a list of class names"),
        ({"data_file": 5}, TypeError, "data_file must be a non-empty string"),
    ],
)
def test_bad_argument_types(tiny_model_dir, toy_csv, kwargs, error, message):
    kwargs = {"data_file": str(toy_csv), **kwargs}
    with pytest.raises(error, match=message):
        make(tiny_model_dir, **kwargs)


def test_tokenizer_argument_of_the_wrong_type_or_place(tiny_model_dir, toy_csv, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(
        TypeError, match=r"tokenizer_name_or_path must be .* got BertTokenizer.*save_pretrained"
    ):
        TextClassificationDataModule(data_file=str(toy_csv), tokenizer_name_or_path=tokenizer)
    with pytest.raises(TypeError, match="tokenizer_name_or_path must be"):
        TextClassificationDataModule(data_file=str(toy_csv), tokenizer_name_or_path=3)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    dm = make(empty, data_file=str(toy_csv))
    with pytest.raises(
        OSError, match="tokenizer_name_or_path '.*empty_dir' could not be loaded as a tokenizer"
    ):
        dm.setup("fit")
    dm = make(tiny_model_dir, data_file=toy_csv)  # a Path is fine, and saved as a string
    assert dm.split_sizes()["train"] == 160 and dm.hparams.data_file == str(toy_csv)


class _RecordTrainSampler(pl.Callback):
    def __init__(self, folder) -> None:
        self.folder = folder

    def on_train_epoch_start(self, trainer, pl_module):
        sampler = trainer.train_dataloader.sampler
        record = {"type": type(sampler).__name__, "epoch": sampler.epoch, "indices": list(sampler)}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.parametrize("group", [True, False])
def test_lightning_ddp_keeps_the_length_grouped_sampler(tiny_model_dir, toy_csv, tmp_path, group):
    """Through Lightning's real DDP code path (one in-process rank, gloo): our sampler is kept and gets
    set_epoch, where a plain shuffling loader gets Lightning's DistributedSampler instead."""
    import torch.distributed as dist

    from lightning_topo.models import SequenceClassifier

    dm = make(tiny_model_dir, data_file=str(toy_csv), batch_size=8, max_length=16, group_by_length=group)
    model = SequenceClassifier(str(tiny_model_dir), num_labels=2)
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[_RecordTrainSampler(tmp_path)],
    )
    try:
        trainer.fit(model, dm)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    record = json.loads((tmp_path / "rank0.json").read_text())
    assert record["type"] == ("LengthGroupedSampler" if group else "DistributedSampler")
    assert record["epoch"] == 1  # set by Lightning at the second epoch
    assert sorted(record["indices"]) == list(range(160))
