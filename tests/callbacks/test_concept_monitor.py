"""ConceptAlignmentMonitor on users' own LightningModules with plain DataLoaders: metrics, JSON,
figures, triggers, resume, a second run in the same folder, bad inputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from user_modules import USER_MODULES, VOCAB, loaders, tiny_tokenizer, trainer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _monitor(tok, **kwargs):
    from lightning_topo.callbacks.concept_monitor import ConceptAlignmentMonitor

    kwargs.setdefault("max_tokens", 100)
    return ConceptAlignmentMonitor(tokenizer=tok, **kwargs)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("shape", list(USER_MODULES))
def test_user_modules_train_two_epochs_and_log_the_headline(tmp_path, tok, shape):
    monitor = _monitor(tok)
    fit = trainer(tmp_path, [monitor])
    fit.fit(USER_MODULES[shape]("bert"), *loaders())
    assert monitor.headline_name == "concepts/polar"
    value = float(fit.callback_metrics["concepts/polar"])
    assert 0.0 <= value <= 1.0
    assert {"concepts/matched/layer_0", "concepts/matched/layer_2", "concepts/polar/layer_2"} <= set(fit.callback_metrics)
    assert [r["epoch"] for r in monitor.history] == [0, 1]
    out = monitor.files_dir(fit)
    assert out == Path(fit.log_dir) / "concepts"
    steps = [r["step"] for r in monitor.history]
    assert _files(out) == sorted(["concepts_matched.png", "concepts_polar.png", "concepts_reference.json",
                                  *(f"concepts_epoch{e}_step{s}.json" for e, s in enumerate(steps))])  # fmt: skip
    metrics = list(csv.DictReader(open(Path(fit.log_dir) / "metrics.csv")))
    assert sum(1 for r in metrics if r.get("concepts/polar")) == 2


@pytest.mark.parametrize("family", ["distilbert", "electra", "deberta"])
def test_other_families(tmp_path, tok, family):
    monitor = _monitor(tok, layers="all")
    fit = trainer(tmp_path, [monitor], max_epochs=1)
    fit.fit(USER_MODULES["net"](family), *loaders())
    assert {f"concepts/polar/layer_{i}" for i in range(3)} <= set(fit.callback_metrics)
    assert 0.0 <= float(fit.callback_metrics["concepts/matched/layer_2"]) <= 1.0


def test_every_metric_json_figures_triggers_and_correlations(tmp_path, tok):
    monitor = _monitor(tok, layers="all", triggers=True, trigger_sentences=8)
    fit = trainer(tmp_path, [monitor], max_epochs=3)
    fit.fit(USER_MODULES["net"]("bert"), *loaders())
    sets = ("lexical", "suffix", "punctuation", "number")  # casing left out: the tokenizer lower-cases
    families = ("matched", "matched_chance", "polar", "polar_chance")
    expected = {f"concepts/{f}/layer_{i}" for f in families for i in range(3)}
    expected |= {f"concepts/aligned/{s}/layer_{i}" for s in sets for i in range(3)}
    assert expected <= set(fit.callback_metrics) and "concepts/aligned/casing/layer_0" not in fit.callback_metrics
    for name in expected:
        assert 0.0 <= float(fit.callback_metrics[name]) <= 1.0
    out = monitor.files_dir(fit)
    steps = [r["step"] for r in monitor.history]
    payload = json.loads((out / f"concepts_epoch1_step{steps[1]}.json").read_text())
    assert payload["model"] == "fine-tuned" and payload["n_tokens"] == 100 and payload["n_concepts"] == 5
    concepts = payload["layers"]["2"]["concepts"]
    assert sum(c["size"] for c in concepts) == 100
    assert all(c["words"] and c["words"][0][0] in VOCAB and c["words"][0][1] >= 1 for c in concepts)
    assert {"aligned", "matched", "polar_class", "class_share"} <= set(concepts[0])
    reference = json.loads((out / "concepts_reference.json").read_text())
    assert reference["model"].startswith("starting") and reference["layers"]["0"]["matched"] is None
    trig = json.loads((out / "concepts_triggers.json").read_text())
    assert trig["layer"] == 2 and set(trig["per_class"]) == {"0", "1"}
    assert all(r["n"] == 8 and len(r["words"]) <= 5 for r in trig["per_class"].values())
    metrics = list(csv.DictReader(open(Path(fit.log_dir) / "metrics.csv")))
    drops = [r for r in metrics if r.get("concepts/trigger_drop")]
    assert len(drops) == 1 and drops[0]["concepts/random_drop"] != ""
    assert [r["epoch"] for r in monitor.history] == [0, 1, 2]
    assert all(r["monitor"] is not None for r in monitor.history)  # val/acc recorded
    assert {f"concepts/{f}/layer_{i}/{c}_val_acc" for f in ("matched", "polar") for i in range(3)
            for c in ("pearson", "spearman")} <= set(fit.callback_metrics)  # fmt: skip
    assert set(monitor.reference_scores) == {n for n in expected if "/matched" not in n} | {"concepts/polar"}


class _Frozen(USER_MODULES["net"]):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_unchanged_model_matches_its_reference_fully(tmp_path, tok):
    monitor = _monitor(tok, layers="all", plots=False)
    trainer(tmp_path, [monitor], max_epochs=1).fit(_Frozen("bert"), *loaders())
    matched = {n: v for n, v in monitor.history[-1]["scores"].items() if "/matched/" in n}
    assert len(matched) == 3 and set(matched.values()) == {1.0}


def test_own_head_without_logits_skips_triggers_with_a_warning(tmp_path, tok):
    monitor = _monitor(tok, triggers=True, plots=False)
    with pytest.warns(UserWarning, match="trigger experiment is skipped"):
        trainer(tmp_path, [monitor], max_epochs=1).fit(USER_MODULES["own_head"]("bert"), *loaders())
    assert monitor.trigger_result is None and monitor.history


def test_second_run_in_the_same_folder_writes_beside_the_first(tmp_path, tok):
    from lightning.pytorch.loggers import CSVLogger

    def run():
        monitor = _monitor(tok, plots=False)
        fit = trainer(tmp_path, [monitor], max_epochs=1, logger=CSVLogger(str(tmp_path), name="run", version=0))
        fit.fit(USER_MODULES["net"]("bert"), *loaders())
        return monitor.files_dir(fit)

    first = run()
    before = {p.name: p.read_bytes() for p in first.glob("concepts_*.json")}
    assert len(before) == 2  # reference + one measurement
    second = run()  # the same logger folder: a run folder of its own (or run_N below the first)
    assert second != first and _files(second) == sorted(before)
    assert {p.name: p.read_bytes() for p in first.glob("concepts_*.json")} == before  # not overwritten


def test_resume_restores_reference_and_history(tmp_path, tok):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(monitor, epochs, ckpt_path=None):
        t = Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=str(tmp_path),
                    callbacks=[monitor, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)])  # fmt: skip
        t.fit(USER_MODULES["net"]("bert"), *loaders(), ckpt_path=ckpt_path)

    first = _monitor(tok, plots=False)
    fit(first, 1)
    second = _monitor(tok, plots=False)
    fit(second, 2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    # the reference is the checkpoint's (the resumed weights differ from the starting ones)
    assert second.metric.reference_state() == first.metric.reference_state()
    assert second.reference_scores == first.reference_scores
    assert [r["epoch"] for r in second.history] == [0, 1] and second.history[:1] == first.history


def test_resume_with_other_data_is_refused_before_training(tmp_path, tok):
    from lightning.pytorch.callbacks import ModelCheckpoint

    first = _monitor(tok, plots=False)
    Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
            callbacks=[first, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)],
            ).fit(USER_MODULES["net"]("bert"), *loaders())  # fmt: skip
    train, _ = loaders()
    _, other_val = loaders(n_val=40)
    second = _monitor(tok, plots=False)
    t = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                enable_checkpointing=False, callbacks=[second])  # fmt: skip
    with pytest.raises(ValueError, match="token set differs"):
        t.fit(USER_MODULES["net"]("bert"), train, other_val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert second.history == first.history  # nothing measured


class _Count(Callback):
    def __init__(self):
        self.steps = 0

    def on_train_batch_start(self, *args):
        self.steps += 1


def _refused(tmp_path, monitor, count=None, val=None):
    t = trainer(tmp_path, [monitor, count or _Count()], max_epochs=1, num_sanity_val_steps=0)
    tr, va = loaders()
    t.fit(USER_MODULES["net"]("bert"), tr, val or va)


def test_n_concepts_above_the_token_set_is_refused_before_training(tmp_path, tok):
    monitor, count = _monitor(tok, max_tokens=100, n_concepts=100, max_per_word=1), _Count()
    with pytest.raises(ValueError, match="n_concepts=100 is larger than the token set"):
        _refused(tmp_path, monitor, count)
    assert count.steps == 0 and not list(tmp_path.rglob("concepts_*.json"))


def test_batches_without_input_ids_or_labels_are_refused_before_training(tmp_path, tok):
    _, val = loaders()
    def as_loader(batches):
        return torch.utils.data.DataLoader(batches, batch_size=None)  # each dict is one batch

    embeds = as_loader([{"inputs_embeds": torch.zeros(8, 4, 32), "labels": torch.zeros(8, dtype=torch.long)}])
    count = _Count()
    with pytest.raises(ValueError, match=r"reads words from batch\['input_ids'\]"):
        _refused(tmp_path, _monitor(tok), count, val=embeds)
    unlabelled = as_loader([{k: v for k, v in b.items() if k != "labels"} for b in val])
    with pytest.raises(ValueError, match="labels_fn"):
        _refused(tmp_path, _monitor(tok), count, val=unlabelled)
    assert count.steps == 0


def test_no_tokenizer_is_refused_at_setup(tmp_path):
    from lightning_topo.callbacks.concept_monitor import ConceptAlignmentMonitor

    with pytest.raises(ValueError, match="pass tokenizer="):
        _refused(tmp_path, ConceptAlignmentMonitor())  # the tiny models are built from configs: no name_or_path


def test_train_split_with_max_samples_is_refused(tmp_path, tok):
    with pytest.raises(ValueError, match="split='train', max_samples=8"):
        _refused(tmp_path, _monitor(tok, split="train", max_samples=8))


def test_tokenizer_is_found_at_the_model_folder(tmp_path):
    """An HF model loaded from a folder: its tokenizer comes from name_or_path (trust_remote_code=False)."""
    from conftest import save_tiny_hf_folder
    from transformers import AutoModelForSequenceClassification

    from lightning_topo.callbacks.concept_monitor import ConceptAlignmentMonitor
    from lightning_topo.loading import load_tokenizer

    folder = save_tiny_hf_folder(tmp_path / "model")
    tok = load_tokenizer(str(folder))

    class Module(USER_MODULES["no_forward"]):
        def __init__(self):
            super().__init__()
            self.classifier = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=False)

    texts = [f"{'a good' if i % 2 else 'a bad'} film number {i}" for i in range(32)]
    enc = tok(texts, [f"second part {i}" for i in range(32)], padding=True, return_tensors="pt")
    rows = [{**{k: v[i] for k, v in enc.items()}, "labels": torch.tensor(i % 2)} for i in range(32)]
    loader = torch.utils.data.DataLoader(rows, batch_size=8)
    monitor = ConceptAlignmentMonitor(max_tokens=60, plots=False)
    fit = trainer(tmp_path, [monitor], max_epochs=1)
    fit.fit(Module(), loader, loader)
    ex = monitor.last_result.extras
    assert set(ex["segments"].tolist()) == {0, 1} and {"good", "bad", "film", "second"} <= set(ex["words"])
    assert 0.0 <= float(fit.callback_metrics["concepts/polar"]) <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_epochs": 0}, ValueError, "every_n_epochs"),
        ({"layers": "top"}, ValueError, "layers"),
        ({"layers": []}, ValueError, "layers"),
        ({"max_tokens": 1}, ValueError, "max_tokens"),
        ({"max_tokens": 2.5}, TypeError, "max_tokens"),
        ({"n_concepts": 300}, ValueError, "n_concepts"),
        ({"theta": 0}, ValueError, "theta"),
        ({"theta": 1.5}, ValueError, "theta"),
        ({"label_sets": ["sentiment"]}, ValueError, "label_sets"),
        ({"seed": None}, TypeError, "seed"),
        ({"triggers": "yes"}, TypeError, "triggers"),
        ({"trigger_sentences": 0}, ValueError, "trigger_sentences"),
        ({"monitor_against": ""}, ValueError, "monitor_against"),
        ({"split": "validation"}, ValueError, "split"),
        ({"log_prefix": "/"}, ValueError, "log_prefix"),
        ({"max_samples": 0}, ValueError, "max_samples"),
    ],
)
def test_bad_arguments(tok, kwargs, error, match):
    with pytest.raises(error, match=match):
        _monitor(tok, **kwargs)


def test_state_dict_roundtrip_and_state_key(tok):
    a = _monitor(tok)
    a.history = [{"epoch": 0, "step": 3, "scores": {"concepts/polar": 0.5}, "monitor": 0.7}]
    a._template.set_reference({"keys": [0.1, 0.1], "positions": [1, 2], "ids": {0: [0, 1], 2: [0, 0]}})
    b = _monitor(tok)
    b.load_state_dict(a.state_dict())
    assert b.history == a.history and b._template.reference_state() == a._template.reference_state()
    assert a.state_key == b.state_key
    assert a.state_key != _monitor(tok, layers=[1]).state_key != _monitor(tok, log_prefix="c2").state_key
    assert a.state_key != _monitor(tok, max_tokens=200).state_key != _monitor(tok, theta=0.8).state_key
    with pytest.warns(UserWarning, match="max_tokens=100 .now 200.; it is not restored"):
        c = _monitor(tok, max_tokens=200)
        c.load_state_dict(a.state_dict())
    assert c.history == [] and c._template.reference is None and c.max_tokens == 200


def test_hooks_are_marked_override():
    from lightning.pytorch.callbacks import Callback as Base

    from lightning_topo.callbacks.concept_monitor import ConceptAlignmentMonitor

    names = [n for n in dir(ConceptAlignmentMonitor)
             if n.startswith("on_") and getattr(ConceptAlignmentMonitor, n) is not getattr(Base, n, None)]  # fmt: skip
    names += ["state_dict", "load_state_dict", "setup"]
    assert "on_train_start" in names and "on_fit_end" in names
    for name in names:
        assert getattr(getattr(ConceptAlignmentMonitor, name), "__override__", False), name


def test_mid_epoch_validations_get_their_own_records_and_log_prefix(tmp_path, tok):
    monitor = _monitor(tok, log_prefix="lens")
    fit = trainer(tmp_path, [monitor], max_epochs=1, val_check_interval=0.5, num_sanity_val_steps=0)
    fit.fit(USER_MODULES["net"]("bert"), *loaders())
    assert [(r["epoch"], r["step"]) for r in monitor.history] == [(0, 3), (0, 6)]
    assert "lens/polar/layer_2" in fit.callback_metrics and "lens/polar" in fit.callback_metrics
    assert not any(k.startswith("concepts/") for k in fit.callback_metrics)
    out = Path(fit.log_dir) / "lens"
    assert (out / "concepts_epoch0_step3.json").exists() and (out / "concepts_epoch0_step6.json").exists()
    assert (out / "concepts_polar.png").exists()


class _BreakWeights(Callback):
    """Puts NaN into the embeddings' LayerNorm after the first training batch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with torch.no_grad():
            pl_module.net.bert.embeddings.LayerNorm.weight.fill_(float("nan"))


def test_nan_hidden_states_log_nan_for_every_name(tmp_path, tok):
    monitor = _monitor(tok, plots=False)
    fit = trainer(tmp_path, [monitor, _BreakWeights()], max_epochs=1, limit_train_batches=1)
    with pytest.warns(UserWarning, match="logs NaN"):
        fit.fit(USER_MODULES["net"]("bert"), *loaders())
    names = {f"concepts/{n}" for n in monitor.metric.metric_names(matched=True)}
    logged = {k: float(v) for k, v in fit.callback_metrics.items() if k.startswith("concepts/")}
    assert names <= set(logged) and all(math.isnan(logged[n]) for n in names)
    assert monitor.history[-1]["scores"].keys() == names


def test_wandb_offline_run_holds_scalars_images_and_table(tmp_path, tok, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(save_dir=str(tmp_path), project="lightning-topo-test", offline=True)
    monitor = _monitor(tok)
    try:
        trainer(tmp_path, [monitor], max_epochs=1, logger=logger).fit(USER_MODULES["net"]("bert"), *loaders())
        run_dir = Path(logger.experiment.dir).parent
    finally:
        import wandb

        wandb.finish()
    from conftest import wandb_scalars_missing

    missing = wandb_scalars_missing(run_dir, ("concepts/polar", "concepts/polar/layer_2", "concepts/matched/layer_0"))
    assert not missing, f"scalars missing from the offline run file: {missing}"
    images = sorted(p.name for p in (run_dir / "files" / "media" / "images").rglob("*.png"))
    assert any("concepts_polar" in n for n in images) and any("concepts_matched" in n for n in images), images


class _RecordConcepts(Callback):
    """Writes every rank's logged ``concepts/*`` values after each validation to JSON."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("concepts/")}
        path = Path(self.out_dir) / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.json"
        path.write_text(json.dumps(values))


@pytest.mark.slow
def test_ddp_two_processes_log_what_one_process_logs(tmp_path, tok):
    torch.distributed.is_available() or pytest.skip("torch.distributed not available")
    # the default "file_descriptor" sharing fails to unpickle the user modules' loaders in the spawned
    # processes here ("unable to resize file"), with or without this monitor
    strategy = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        results = _ddp_runs(tmp_path, tok)
    finally:
        torch.multiprocessing.set_sharing_strategy(strategy)
    (one,), (rank0, rank1) = results[1], results[2]
    assert len(one) == 1 + 3 * 8 and rank0 == rank1  # every rank logs the same values
    assert one.keys() == rank0.keys()
    for name, value in one.items():
        assert rank0[name] == pytest.approx(value, abs=1e-6), name


def _ddp_runs(tmp_path, tok):
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        out.mkdir()
        t = Trainer(
            max_epochs=1, accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices == 2 else "auto",
            logger=False, enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0,
            default_root_dir=str(tmp_path / f"root{devices}"),
            callbacks=[_monitor(tok, layers="all", plots=False), _RecordConcepts(str(out))],
        )  # fmt: skip
        t.fit(_Frozen("bert"), *loaders())  # lr 0: the same weights whatever the number of processes
        results[devices] = [json.loads(p.read_text()) for p in sorted(out.glob("rank*_epoch0.json"))]
    return results
