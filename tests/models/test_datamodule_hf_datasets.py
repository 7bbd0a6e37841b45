"""``TextClassificationDataModule(data_file=<datasets.Dataset | DatasetDict>)``."""

import pytest
import torch

datasets = pytest.importorskip("datasets")

from lightning_topo.models import TextClassificationDataModule  # noqa: E402

WORDS = ["good", "bad", "fine", "awful", "great", "boring"]


def _dataset(n=60, class_label=True):
    texts = [f"{WORDS[i % 6]} movie number {i}" for i in range(n)]
    labels = [i % 2 for i in range(n)]
    label = datasets.ClassLabel(names=["neg", "pos"]) if class_label else datasets.Value("int64")
    feats = datasets.Features({"text": datasets.Value("string"), "label": label, "extra": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"text": texts, "label": labels, "extra": list(range(n))}, features=feats)


def test_a_dataset_is_split_by_rule_and_class_names_come_from_its_features(tiny_hf_folder):
    dm = TextClassificationDataModule(data_file=_dataset(), tokenizer_name_or_path=str(tiny_hf_folder), batch_size=8)
    dm.setup("fit")
    assert dm.id2label == {0: "neg", 1: "pos"}
    assert dm.split_sizes() == {"train": 48, "val": 6, "test": 6}
    batch = next(iter(dm.train_dataloader()))
    assert {"input_ids", "attention_mask", "labels"} <= set(batch) and batch["labels"].dtype == torch.int64
    assert "data_file" not in dm.hparams  # a Dataset is not written into checkpoints


def test_a_dataset_dict_keeps_its_splits(tiny_hf_folder):
    ds = _dataset(class_label=False)
    dd = datasets.DatasetDict(
        {"train": ds.select(range(40)), "validation": ds.select(range(40, 52)), "test": ds.select(range(52, 60))}
    )
    dm = TextClassificationDataModule(data_file=dd, tokenizer_name_or_path=str(tiny_hf_folder), batch_size=8)
    dm.setup("fit")
    assert dm.split_sizes() == {"train": 40, "val": 12, "test": 8}
    texts = dm.split_texts("val")
    assert texts[0] == ds[40]["text"]


def test_a_missing_column_or_train_split_is_named(tiny_hf_folder):
    with pytest.raises(ValueError, match="text_column.*'sentence'"):
        TextClassificationDataModule(
            data_file=_dataset(), text_column="sentence", tokenizer_name_or_path=str(tiny_hf_folder)
        ).setup("fit")
    dd = datasets.DatasetDict({"validation": _dataset()})
    with pytest.raises(ValueError, match="no 'train' split"):
        TextClassificationDataModule(data_file=dd, tokenizer_name_or_path=str(tiny_hf_folder)).setup("fit")
