"""One fit with TopologicalPruning on a tiny BERT, run by tests/callbacks/test_pruning_ddp.py as a
script (Lightning's strategy="ddp" launcher starts the other rank by running this file again).

    python ddp_prune_run.py MODEL_DIR OUT_DIR DEVICES [MODE]

MODE ``epoch1`` (default): prune at the start of epoch 1 on the training shards, then recover.
MODE ``fit-end``: prune at the end of fit (``prune_epoch=None``) on an explicit calibration
``dataloader=`` (the same on every rank), no recovery.

Same data in both modes: 64 training and 32 validation examples, global batch 16 (16 // DEVICES per
rank), no dropout and no shuffling (Lightning's own DistributedSampler would shuffle the training
data, so the module shards it itself with DistributedSampler(shuffle=False)): rank r reads examples
r, r + 2, ..., and one process and two take the same gradient steps. Rank 0 writes
OUT_DIR/pruned (the compressed checkpoint) and OUT_DIR/result.json (history and summary).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def examples(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 128, (n, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[::4, 9:] = 0
    ids[mask == 0] = 0
    labels = (ids[:, 1] % 2).long()
    return [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(n)]


class UserModule(pl.LightningModule):
    """A user's own module: the HF classifier at self.net, its own steps and optimizer."""

    def __init__(self, model_dir: str, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        from transformers import BertForSequenceClassification

        self.net = BertForSequenceClassification.from_pretrained(model_dir, trust_remote_code=False)
        self.loss = nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        logits = self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = self.loss(logits, batch["labels"])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        self.log("val/acc", (logits.argmax(-1) == batch["labels"]).float().mean(), sync_dist=True)

    def _loader(self, data):
        sampler = None
        if self.trainer.world_size > 1:
            sampler = torch.utils.data.DistributedSampler(
                data, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size, shuffle=False, sampler=sampler)

    def train_dataloader(self):
        return self._loader(examples(64, 0))

    def val_dataloader(self):
        return self._loader(examples(32, 1))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def main() -> None:
    model_dir, out_dir, devices = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "epoch1"
    from lightning_topo.callbacks import TopologicalPruning

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    if mode == "fit-end":
        calibration = torch.utils.data.DataLoader(examples(32, 2), batch_size=8, shuffle=False)
        kwargs = {"prune_epoch": None, "dataloader": calibration, "calibration_batches": 4}
    else:
        kwargs = {"prune_epoch": 1, "calibration_batches": 2}
    cb = TopologicalPruning(ratio=0.6, output_dir=out_dir / "pruned", **kwargs)
    trainer = pl.Trainer(
        max_epochs=3 if mode == "epoch1" else 1, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        callbacks=[cb], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, deterministic=True, use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(UserModule(model_dir, 16 // devices))
    if trainer.is_global_zero:
        result = {
            "history": cb.history,
            "summary": cb.summary,
            "saved": str(cb.saved_path),
            "world_size": trainer.world_size,
            "net_is_pruned": type(trainer.lightning_module.net).__name__,
        }
        (out_dir / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
