"""LightningModules written the way users write them, for testing every callback outside our own
``SequenceClassifier`` / ``TextClassificationDataModule``: the Hugging Face model at any attribute,
any ``forward`` (or none), a ``validation_step`` that only logs ``val/acc``, plain DataLoaders.

``USER_MODULES`` maps a short name to a factory ``(family) -> LightningModule``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn

FAMILIES = ("bert", "distilbert", "electra", "deberta")


def tiny_config(family: str = "bert", num_labels: int = 2):
    import transformers as t

    common = dict(vocab_size=100, num_labels=num_labels)
    if family == "bert":
        return t.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **common)
    if family == "distilbert":
        return t.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, dropout=0.0,
                                  attention_dropout=0.0, **common)
    if family == "electra":
        return t.ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                               **common)
    if family == "deberta":
        return t.DebertaV2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **common)
    raise ValueError(family)


def _classifier(family: str):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config(family))


def _inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}


class _Steps(pl.LightningModule):
    """training/validation steps shared by the shapes; each shape defines ``logits(batch)``."""

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self.logits(batch), batch["labels"])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        acc = (self.logits(batch).argmax(-1) == batch["labels"]).float().mean()
        self.log("val/acc", acc)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class NetModule(_Steps):
    """The HF classifier at ``self.net``; ``forward(input_ids, attention_mask)`` returns logits."""

    def __init__(self, family="bert"):
        super().__init__()
        self.net = _classifier(family)

    def forward(self, input_ids, attention_mask=None):
        return self.net(input_ids=input_ids, attention_mask=attention_mask).logits

    def logits(self, batch):
        return self(**_inputs(batch))


class BatchForward(_Steps):
    """``forward(batch)``; the classifier nested in a ModuleDict."""

    def __init__(self, family="bert"):
        super().__init__()
        self.parts = nn.ModuleDict({"backbone": _classifier(family)})

    def forward(self, batch):
        return self.parts["backbone"](**_inputs(batch)).logits

    def logits(self, batch):
        return self(batch)


class NoForward(_Steps):
    """No ``forward`` at all: the steps call ``self.classifier`` directly."""

    def __init__(self, family="bert"):
        super().__init__()
        self.classifier = _classifier(family)

    def logits(self, batch):
        return self.classifier(**_inputs(batch)).logits


class OwnHead(_Steps):
    """``AutoModel`` (no task head) + the user's own linear head on the first token."""

    def __init__(self, family="bert"):
        super().__init__()
        from transformers import AutoModel

        torch.manual_seed(0)
        cfg = tiny_config(family)
        self.encoder = AutoModel.from_config(cfg)
        width = getattr(cfg, "hidden_size", None) or cfg.dim
        self.head = nn.Linear(width, 2)

    def forward(self, input_ids, attention_mask):
        return self.head(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])

    def logits(self, batch):
        return self(batch["input_ids"], batch["attention_mask"])


USER_MODULES = {"net": NetModule, "batch_forward": BatchForward, "no_forward": NoForward, "own_head": OwnHead}

WORDS = ["good", "bad", "the", "film", "movie", "plot", "was", "is", "a", "and", "it", "great", "awful", "dull",
         "nice", "story", ".", ",", "!", "1990", "3"]  # fmt: skip
#: A WordPiece vocabulary of exactly the tiny configs' 100 ids (0-4 special, as the data uses them).
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *(f"w{i}" for i in range(100 - 5 - len(WORDS)))]


def tiny_tokenizer():
    """A BertTokenizer over :data:`VOCAB` (the tiny models are built from configs, so they have no
    tokenizer of their own; the concepts lens needs one to read words)."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})


def token_dataset(n=48, seed=0, seq=8):
    """``n`` examples (dicts of 1-D tensors) whose label is written in token 1 (learnable); every
    third row padded in its last 2 positions."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        label = i % 2
        ids = torch.randint(5, 100, (seq,), generator=g)
        ids[0] = 2
        ids[1] = 3 + label
        mask = torch.ones(seq, dtype=torch.long)
        if i % 3 == 0:
            mask[-2:] = 0
            ids[-2:] = 0
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(label)})
    return rows


def loaders(n_train=48, n_val=32, batch_size=8):
    """Plain ``DataLoader`` s of the token dataset (train shuffled with a seeded generator)."""
    train = torch.utils.data.DataLoader(
        token_dataset(n_train, seed=1), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    val = torch.utils.data.DataLoader(token_dataset(n_val, seed=2), batch_size=batch_size)
    return train, val


def trainer(tmp_path, callbacks, max_epochs=2, **kwargs):
    from lightning.pytorch.loggers import CSVLogger

    kwargs.setdefault("logger", CSVLogger(str(tmp_path), name="run"))
    return pl.Trainer(
        default_root_dir=str(tmp_path), max_epochs=max_epochs, callbacks=callbacks, accelerator="cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, **kwargs
    )
