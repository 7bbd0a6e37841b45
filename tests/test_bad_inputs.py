"""Issue 12: every bad input is refused early and clearly, in one parametrised module.

Each :class:`Case` builds its input in ``tmp_path`` and returns the bad call. The test then checks

* the exception type,
* that the message holds the expected phrase and names the argument (the phrase) or the file,
* that nothing was changed or written: the files under ``tmp_path`` (names, contents, modes) and
  the ``state_dict`` hash of every model the case registered are the same before and after.

The two CLIs have their own parametrised tests: exit status 2, exactly one
``lightning-topo ...: error:`` line on stderr, no traceback, nothing written. ``docs/errors.md``
lists the same refusals as a table.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import tiny_bert_config

# ---------------------------------------------------------------------------------------- helpers


class Env:
    """What a builder gets: the test's folder and monkeypatch; it registers models and files."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp_path
        self.monkeypatch = monkeypatch
        self.models: list[torch.nn.Module] = []
        self.file: Path | None = None  # the file the message must name, when there is one

    def watch(self, model: Any) -> Any:
        """Register a model whose weights must be the same after the refused call."""
        self.models.append(model)
        return model


@dataclasses.dataclass(frozen=True)
class Case:
    """A bad input: ``fn(env)`` prepares it and returns the call that must raise ``exc``."""

    id: str
    fn: Callable[[Env], Callable[[], Any]]
    exc: type[BaseException]
    phrase: str  # in the message; names the argument (files: ``env.file`` is checked as well)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: kind, mode and (files) the SHA-256 of the content."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_file():
            out[str(p.relative_to(root))] = ("file", st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[str(p.relative_to(root))] = ("dir", st.st_mode)
    return out


def state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tiny_model(**overrides: Any) -> torch.nn.Module:
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(**overrides)).eval()


def batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 128, (4, 8), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[:, 0] % 2})
    return out


def cloud(n: int = 8, d: int = 3) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def two_classes(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return cloud(n), torch.arange(n) % 2


WORDS = ["good", "bad", "fine", "awful", "great", "boring", "fun", "dull", "movie", "plot", "the", "a"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]


def write_tsv(path: Path, header: str = "text\tlabel", n: int = 40) -> Path:
    rows = [header] + [f"{WORDS[i % 8]} movie {WORDS[(3 * i) % 8]} plot\t{i % 2}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_latin1_csv(path: Path) -> Path:
    path.write_bytes("text,label\ngood movie,1\ncaf\u00e9 plot,0\n".encode("latin-1"))
    return path


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A tiny random BERT classifier saved with a word-level tokenizer (copied into each case)."""
    from transformers import BertTokenizer

    path = tmp_path_factory.mktemp("tiny_hf") / "model"
    tiny_model().save_pretrained(path)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def compressed(tmp_path_factory) -> Path:
    """A compressed checkpoint written by save_compressed (copied into each case)."""
    from lightning_topo.pruning import save_compressed

    path = tmp_path_factory.mktemp("compressed") / "ckpt"
    save_compressed(tiny_model(), path)
    return path


SHARED: dict[str, Path] = {}  # filled from the module fixtures by the autouse fixture below


@pytest.fixture(autouse=True)
def _shared(hf_folder, compressed, monkeypatch):
    SHARED["hf"], SHARED["compressed"] = hf_folder, compressed
    monkeypatch.setattr(sys, "argv", ["lightning-topo"])  # LightningCLI warns about pytest's argv


def copy_compressed(env: Env, name: str = "ckpt") -> Path:
    return Path(shutil.copytree(SHARED["compressed"], env.tmp / name))


def copy_hf(env: Env, name: str = "src") -> Path:
    return Path(shutil.copytree(SHARED["hf"], env.tmp / name))


# ------------------------------------------------------------------------------------- topology


def _topo(fn_name: str, x: Any, **kwargs: Any) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        import lightning_topo.topology as topology

        return lambda: getattr(topology, fn_name)(x() if callable(x) else x, **kwargs)

    return build


def _asymmetric() -> torch.Tensor:
    d = torch.cdist(cloud(), cloud()).double()
    d[0, 1] += 1.0
    return d


def _diagonal() -> torch.Tensor:
    d = torch.cdist(cloud(), cloud()).double()
    d.fill_diagonal_(0.5)
    return d


def _nan_points() -> torch.Tensor:
    x = cloud()
    x[3, 1] = math.nan
    return x


def _too_big_for_memory(env: Env) -> Callable[[], Any]:
    from lightning_topo.topology import _memory, persistence_diagrams

    env.monkeypatch.setattr(_memory, "available_bytes", lambda device: 1000)
    return lambda: persistence_diagrams(cloud(50))


def _over_rlimit(env: Env) -> Callable[[], Any]:
    """Only RLIMIT_AS / RLIMIT_DATA is short (MemAvailable and the cgroup are not): the smallest wins."""
    from lightning_topo.topology import _memory, persistence_diagrams

    env.monkeypatch.setattr(_memory, "meminfo_available_bytes", lambda: 1 << 40)
    env.monkeypatch.setattr(_memory, "cgroup_available_bytes", lambda: None)
    env.monkeypatch.setattr(_memory, "rlimit_available_bytes", lambda: 100_000)
    return lambda: persistence_diagrams(cloud(80))


def _over_cgroup(env: Env) -> Callable[[], Any]:
    from lightning_topo.topology import _memory, persistence_diagrams

    env.monkeypatch.setattr(_memory, "meminfo_available_bytes", lambda: 1 << 40)
    env.monkeypatch.setattr(_memory, "cgroup_available_bytes", lambda: 100_000)
    env.monkeypatch.setattr(_memory, "rlimit_available_bytes", lambda: None)
    return lambda: persistence_diagrams(cloud(80))


def _psf_diagrams(diagram: torch.Tensor) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.scores import psf_from_diagrams

        return lambda: psf_from_diagrams([diagram])

    return build


TOPOLOGY = [
    Case("topology-list-points", _topo("h0_diagram", [[0.0, 1.0], [1.0, 0.0]]), TypeError, "points must be a torch.Tensor"),
    Case("topology-int-points", _topo("h1_diagram", torch.ones(4, 2, dtype=torch.long)), TypeError, "points must have a floating-point dtype"),
    Case("topology-nan-points", _topo("persistence_diagrams", _nan_points), ValueError, "points must be finite"),
    Case("topology-one-point", _topo("h0_diagram", torch.zeros(1, 3)), ValueError, "points needs at least 2 points"),
    Case("topology-float32-overflow", _topo("h0_diagram", lambda: torch.tensor([[3e38, 0.0], [-3e38, 0.0]])), ValueError, "float64"),
    Case("topology-asymmetric-matrix", _topo("h0_diagram", _asymmetric, distance_matrix=True), ValueError, "must be symmetric"),
    Case("topology-nonzero-diagonal", _topo("h1_diagram", _diagonal, distance_matrix=True), ValueError, "zero diagonal"),
    Case("topology-backend-auto", _topo("persistence_diagrams", cloud, backend="auto"), ValueError, "backend must be one of"),
    Case("topology-max-dim-2", _topo("persistence_diagrams", cloud, max_dim=2), ValueError, "max_dim"),
    Case("topology-n-threads-0", _topo("h1_diagram", cloud, n_threads=0), ValueError, "n_threads must be a positive int"),
    Case("topology-out-of-memory", _too_big_for_memory, MemoryError, "max_points_per_class"),
    Case("topology-h1-over-rlimit", _over_rlimit, MemoryError, "H1 persistence (distance matrix"),
    Case("topology-h1-over-cgroup", _over_cgroup, MemoryError, "Use fewer points"),
    Case("topology-meta-tensor", _topo("persistence_diagrams", lambda: torch.empty(10, 3, device="meta")), ValueError, "points is a tensor on the meta device"),
    Case("topology-meta-matrix", _topo("h0_diagram", lambda: torch.empty(4, 4, device="meta"), distance_matrix=True), ValueError, "meta device"),
    Case("topology-diagram-death-before-birth", _topo("total_persistence", torch.tensor([[0.0, 1.0], [0.9, 0.2]])), ValueError, "death < birth, e.g. row 1"),
    Case("psf-diagram-death-before-birth", _psf_diagrams(torch.tensor([[0.5, 0.1]])), ValueError, "death < birth"),
]  # fmt: skip


# --------------------------------------------------------------------------------------- scores


def _psf(**kwargs: Any) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.scores import psf

        kw = dict(kwargs)
        points, labels = kw.pop("data", None) or two_classes()
        return lambda: psf(points, labels, **kw)

    return build


def _psf_loss(*args: Any, **kwargs: Any) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.scores import PSFLoss

        return lambda: PSFLoss(*args, **kwargs)

    return build


def _resolve_layers(layers: Any) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.representations import resolve_layers

        return lambda: resolve_layers(layers, 4)

    return build


SCORES = [
    Case("psf-max-points-2.5", _psf(max_points_per_class=2.5), TypeError, "max_points_per_class must be an int >= 2"),
    Case("psf-max-points-1", _psf(max_points_per_class=1), ValueError, "max_points_per_class must be an int >= 2"),
    Case("psf-bandwidth-nan", _psf(sampling="kde", bandwidth=math.nan), ValueError, "bandwidth must be a finite number > 0"),
    Case("psf-seed-none", _psf(seed=None), TypeError, "seed must be an int >= 0"),
    Case("psf-seed-negative", _psf(seed=-1), ValueError, "seed must be an int >= 0"),
    Case("psf-unknown-sampling", _psf(sampling="bootstrap"), ValueError, "sampling must be one of"),
    Case("psf-unknown-preset", _psf(preset="fast"), ValueError, "preset must be one of"),
    Case("psf-float-labels", _psf(data=(cloud(), torch.tensor([0.0, 1.0] * 4))), TypeError, "labels must have an integer dtype"),
    Case("psf-labels-length", _psf(data=(cloud(), torch.tensor([0, 1] * 3))), ValueError, "labels has 6 entries"),
    Case("psf-one-class", _psf(data=(cloud(), torch.zeros(8, dtype=torch.long))), ValueError, "labels"),
    Case("psf-class-of-one-point", _psf(data=(cloud(), torch.tensor([0, 0, 0, 1, 1, 1, 1, 2]))), ValueError, "labels"),
    Case("psfloss-weight-true", _psf_loss(weight=True), TypeError, "weight must be a finite number"),
    Case("psfloss-weight-nan", _psf_loss(weight=math.nan), ValueError, "weight must be a finite number >= 0"),
    Case("psfloss-weight-str", _psf_loss(weight="0.1"), TypeError, "weight must be a finite number"),
    Case("psfloss-mode", _psf_loss(mode="up"), ValueError, "mode must be one of"),
    Case("layers-float-in-list", _resolve_layers([1.7]), TypeError, "layers[0] must be an int"),
    Case("layers-float", _resolve_layers(1.0), TypeError, "layers must be an int, a list of ints or 'all'"),
    Case("layers-out-of-range", _resolve_layers([7]), ValueError, "layers"),
]  # fmt: skip


# ------------------------------------------------------------------------------------ callbacks


def _callback(module: str, cls: str, **kwargs: Any) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        import importlib

        klass = getattr(importlib.import_module(f"lightning_topo.callbacks.{module}"), cls)
        return lambda: klass(**kwargs)

    return build


def _psm(**kwargs: Any) -> Callable[[Env], Callable[[], Any]]:
    return _callback("persistence_monitor", "PersistenceScoreMonitor", **kwargs)


def _tp(**kwargs: Any) -> Callable[[Env], Callable[[], Any]]:
    return _callback("pruning", "TopologicalPruning", **kwargs)


def _tp_setup_output_file(env: Env) -> Callable[[], Any]:
    from lightning_topo.callbacks import TopologicalPruning

    env.file = env.tmp / "notes.txt"
    env.file.write_text("keep me")
    module = _classifier_module(env, tiny_model())
    cb = TopologicalPruning(prune_epoch=0, output_dir=env.file, overwrite=True)
    return lambda: cb.setup(_fake_trainer(env), module, "fit")


def _tp_setup_output_under_file(env: Env) -> Callable[[], Any]:
    from lightning_topo.callbacks import TopologicalPruning

    env.file = env.tmp / "notes.txt"
    env.file.write_text("keep me")
    module = _classifier_module(env, tiny_model())
    cb = TopologicalPruning(prune_epoch=0, output_dir=env.file / "pruned")
    return lambda: cb.setup(_fake_trainer(env), module, "fit")


def _classifier_module(env: Env, model: torch.nn.Module) -> Any:
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

    return env.watch(Module())


def _fake_trainer(env: Env, world_size: int = 1) -> SimpleNamespace:
    return SimpleNamespace(world_size=world_size, loggers=[], default_root_dir=str(env.tmp), ckpt_path=None)


def _tp_setup_xlm_roberta(env: Env) -> Callable[[], Any]:
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    from lightning_topo.callbacks import TopologicalPruning

    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    module = _classifier_module(env, XLMRobertaForSequenceClassification(config))
    cb = TopologicalPruning(prune_epoch=0, output_dir=env.tmp / "pruned")
    return lambda: cb.setup(_fake_trainer(env), module, "fit")


def _tp_setup_existing_output(env: Env) -> Callable[[], Any]:
    from lightning_topo.callbacks import TopologicalPruning

    env.file = env.tmp / "pruned"
    env.file.mkdir()
    (env.file / "mine.txt").write_text("keep")
    module = _classifier_module(env, tiny_model())
    cb = TopologicalPruning(prune_epoch=0, output_dir=env.file)
    return lambda: cb.setup(_fake_trainer(env), module, "fit")


def _tp_setup_plain_module(env: Env) -> Callable[[], Any]:
    import lightning.pytorch as pl

    from lightning_topo.callbacks import TopologicalPruning

    class Plain(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

    module = env.watch(Plain())
    cb = TopologicalPruning(prune_epoch=0, output_dir=env.tmp / "pruned")
    return lambda: cb.setup(_fake_trainer(env), module, "fit")


def _tp_setup_ddp(env: Env) -> Callable[[], Any]:
    from lightning_topo.callbacks import TopologicalPruning

    module = _classifier_module(env, tiny_model())
    cb = TopologicalPruning(prune_epoch=0, output_dir=env.tmp / "pruned")
    trainer = _fake_trainer(env, world_size=2)
    trainer.strategy = SimpleNamespace()
    return lambda: cb.setup(trainer, module, "fit")


CALLBACKS = [
    Case("psm-layers-float", _psm(layers=[1.7]), TypeError, "layers[0] must be an int"),
    Case("psm-max-points-2.5", _psm(max_points_per_class=2.5), TypeError, "max_points_per_class must be an int >= 2"),
    Case("psm-every-n-epochs-0", _psm(every_n_epochs=0), ValueError, "every_n_epochs"),
    Case("psm-max-samples-float", _psm(max_samples=2.5), TypeError, "max_samples"),
    Case("psm-homology-dims", _psm(homology_dims=(0.5,)), ValueError, "homology_dims"),
    Case("psm-scores", _psm(scores=("psf", "nope")), ValueError, "scores"),
    Case("psm-plots-str", _psm(plots="yes"), TypeError, "plots"),
    Case("psm-log-prefix-empty", _psm(log_prefix=""), ValueError, "log_prefix"),
    Case("psm-split", _psm(split="dev"), ValueError, "split must be one of"),
    Case("psm-monitor-against-empty", _psm(monitor_against=""), ValueError, "monitor_against"),
    Case("psm-seed-none", _psm(seed=None), TypeError, "seed must be an int >= 0"),
    Case("tp-ratio-1.2", _tp(ratio=1.2), ValueError, "ratio"),
    Case("tp-ratio-none", _tp(ratio=None), TypeError, "ratio"),
    Case("tp-ratio-str", _tp(ratio="0.6"), TypeError, "ratio"),
    Case("tp-units-string", _tp(units="ffnx"), ValueError, "units must be a non-empty subset"),
    Case("tp-stat", _tp(stat="mean"), ValueError, "stat"),
    Case("tp-min-heads-0", _tp(min_heads=0), ValueError, "min_heads"),
    Case("tp-max-positions-1", _tp(max_positions=1), ValueError, "max_positions"),
    Case("tp-steps-2.5", _tp(steps=2.5), TypeError, "steps must be an int >= 1"),
    Case("tp-steps-without-epoch", _tp(steps=2, prune_epoch=None), ValueError, "prune_epoch"),
    Case("tp-method", _tp(method="nope"), ValueError, "method must be one of"),
    Case("tp-overwrite-str", _tp(overwrite="yes"), TypeError, "overwrite must be True or False"),
    Case("tp-output-without-save", _tp(output_dir="out", save=False), ValueError, "output_dir"),
    Case("tp-dataloader-str", _tp(dataloader="train.csv"), TypeError, "dataloader"),
    Case("tp-distill-str", _tp(distill="yes"), TypeError, "distill must be True or False"),
    Case("tp-distill-at-fit-end", _tp(distill=True, prune_epoch=None), ValueError, "distill=True needs recovery epochs"),
    Case("tp-temperature-0", _tp(distill=True, temperature=0), ValueError, "temperature must be > 0"),
    Case("tp-alpha-1.5", _tp(distill=True, alpha=1.5), ValueError, "alpha"),
    Case("tp-setup-output-is-a-file", _tp_setup_output_file, FileExistsError, "output_dir"),
    Case("tp-setup-output-under-a-file", _tp_setup_output_under_file, NotADirectoryError, "output_dir"),
    Case("tp-setup-xlm-roberta", _tp_setup_xlm_roberta, TypeError, "XLMRobertaForSequenceClassification"),
    Case("tp-setup-existing-output", _tp_setup_existing_output, FileExistsError, "overwrite=True"),
    Case("tp-setup-no-model-attribute", _tp_setup_plain_module, TypeError, "pl_module.model"),
    Case("tp-setup-ddp", _tp_setup_ddp, ValueError, "lightning-topo prune"),
    Case("geometry-attention", _callback("geometry_monitor", "GeometryMonitor", attention="sometimes"), ValueError, "attention"),
    Case("geometry-max-samples-0", _callback("geometry_monitor", "GeometryMonitor", max_samples=0), ValueError, "max_samples must be an int >= 1"),
    Case("geometry-layers-float", _callback("geometry_monitor", "GeometryMonitor", layers=[0.5]), TypeError, "layers[0] must be an int"),
    Case("concepts-theta", _callback("concept_monitor", "ConceptAlignmentMonitor", theta=1.5), ValueError, "theta"),
    Case("concepts-max-tokens-float", _callback("concept_monitor", "ConceptAlignmentMonitor", max_tokens=10.5), TypeError, "max_tokens"),
    Case("concepts-label-sets", _callback("concept_monitor", "ConceptAlignmentMonitor", label_sets=("colour",)), ValueError, "label_sets"),
    Case("tree-targets", _callback("tree_probe_monitor", "TreeProbeMonitor", targets=("depth-ish",)), ValueError, "targets"),
    Case("tree-probe-lr-nan", _callback("tree_probe_monitor", "TreeProbeMonitor", probe_lr=math.nan), ValueError, "probe_lr"),
    Case("tree-max-sentences-float", _callback("tree_probe_monitor", "TreeProbeMonitor", max_sentences=2.5), TypeError, "max_sentences"),
]  # fmt: skip


# -------------------------------------------------------------------------------------- pruning


def _prune(model_fn: Callable[[], torch.nn.Module] = tiny_model, data: Any = "batches", **kwargs: Any):
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.pruning import prune_model

        model = env.watch(model_fn())
        loader = batches() if data == "batches" else data
        return lambda: prune_model(model, loader, **kwargs)

    return build


def _xlm_roberta() -> torch.nn.Module:
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    torch.manual_seed(0)
    return XLMRobertaForSequenceClassification(
        XLMRobertaConfig(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=2,
        )  # fmt: skip
    )


def _masked_lm() -> torch.nn.Module:
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(tiny_bert_config())


def _one_layer_of_scores(model, outputs, kind, ctx):  # a custom method that forgets a layer
    return [torch.ones(64 if kind == "ffn" else 4)]


def _nan_scores(model, outputs, kind, ctx):
    return [torch.full((64 if kind == "ffn" else 4,), math.nan) for _ in range(2)]


def _config(**kwargs: Any) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.pruning import PruningConfig

        return lambda: PruningConfig(**kwargs)

    return build


def _plan(**kwargs: Any) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.pruning import compute_importance, plan_keep_masks

        model = env.watch(tiny_model())
        table = compute_importance(model, method="magnitude")
        return lambda: plan_keep_masks(model, table, **kwargs)

    return build


PRUNING = [
    Case("prune-ratio-0", _prune(ratio=0), ValueError, "ratio (fraction of encoder parameters kept) must be a number in (0, 1]"),
    Case("prune-ratio-nan", _prune(ratio=math.nan), ValueError, "ratio"),
    Case("prune-ratio-true", _prune(ratio=True), TypeError, "ratio"),
    Case("prune-units-f", _prune(units="f"), ValueError, "units must be a non-empty subset of ('ffn', 'heads')"),
    Case("prune-units-empty", _prune(units=()), ValueError, "units"),
    Case("prune-min-heads-0", _prune(min_heads=0), ValueError, "min_heads"),
    Case("prune-ffn-multiple-2.5", _prune(ffn_multiple=2.5), TypeError, "ffn_multiple must be an int >= 1 (1 disables rounding)"),
    Case("prune-max-positions-1", _prune(max_positions=1), ValueError, "max_positions"),
    Case("prune-stat-mean", _prune(stat="mean"), ValueError, "stat"),
    Case("prune-seed-none", _prune(seed=None), TypeError, "seed must be an int >= 0"),
    Case("prune-method-unknown", _prune(method="nope"), ValueError, "method must be one of"),
    Case("prune-method-int", _prune(method=42), TypeError, "method must be one of"),
    Case("prune-dataloader-int", _prune(data=5), TypeError, "dataloader"),
    Case("prune-not-an-encoder", _prune(lambda: torch.nn.Linear(4, 2)), TypeError, "structured pruning supports these BERT-family models"),
    Case("prune-custom-wrong-layers", _prune(method=_one_layer_of_scores), ValueError, "one score tensor per encoder layer"),
    Case("prune-custom-nan", _prune(method=_nan_scores), ValueError, "NaN"),
    Case("prune-quantile-1", _prune(ratio=None, quantile=1.0), ValueError, "quantile"),
    Case("config-calibration-batches-0", _config(calibration_batches=0), ValueError, "calibration_batches"),
    Case("plan-ratio-1.5", _plan(ratio=1.5), ValueError, "ratio"),
]  # fmt: skip


# --------------------------------------------------------------------------------------- export


def _save_existing(env: Env) -> Callable[[], Any]:
    from lightning_topo.pruning import save_compressed

    env.file = copy_compressed(env)
    model = env.watch(tiny_model())
    return lambda: save_compressed(model, env.file)


def _save_over(kind: str) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.pruning import save_compressed

        if kind == "file":
            env.file = env.tmp / "model.bin"
            env.file.write_bytes(b"precious")
            target = env.file
        elif kind == "folder":
            env.file = env.tmp / "photos"
            env.file.mkdir()
            (env.file / "cat.jpg").write_bytes(b"meow")
            target = env.file
        else:  # the parent is a file
            env.file = env.tmp / "blocker.txt"
            env.file.write_text("x")
            target = env.file / "ckpt"
        model = env.watch(tiny_model())
        return lambda: save_compressed(model, target, overwrite=True)

    return build


def _save_extra(name: str) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.pruning import save_compressed

        model = env.watch(tiny_model())
        return lambda: save_compressed(model, env.tmp / "ckpt", extra_files={name: "x"})

    return build


def _load(prepare: Callable[[Env], Path], **kwargs: Any) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.pruning import load_compressed

        path = prepare(env)
        return lambda: load_compressed(path, **kwargs)

    return build


def _missing(env: Env) -> Path:
    env.file = env.tmp / "nowhere"
    return env.file


def _a_file(env: Env) -> Path:
    env.file = env.tmp / "model.safetensors"
    env.file.write_bytes(b"\0" * 16)
    return env.file


def _no_config(env: Env) -> Path:
    env.file = env.tmp / "bert-base-uncased"
    env.file.mkdir()
    (env.file / "README.md").write_text("hello")
    return env.file


def _flipped(env: Env) -> Path:
    path = copy_compressed(env)
    env.file = path / "model.safetensors"
    data = bytearray(env.file.read_bytes())
    data[-5] ^= 0x01
    env.file.write_bytes(bytes(data))
    return path


def _truncated(env: Env) -> Path:
    path = copy_compressed(env)
    env.file = path / "model.safetensors"
    env.file.write_bytes(env.file.read_bytes()[:-100])
    return path


def _empty_weights(env: Env) -> Path:
    path = copy_compressed(env)
    env.file = path / "model.safetensors"
    env.file.write_bytes(b"")
    (path / "SHA256SUMS").unlink()
    return path


def _listed_file_missing(env: Env) -> Path:
    path = copy_compressed(env)
    env.file = path / "config.json"
    (path / "SHA256SUMS").write_text((path / "SHA256SUMS").read_text() + f"{'0' * 64}  vocab.txt\n")
    env.file = path / "vocab.txt"
    return path


def _no_weights(env: Env) -> Path:
    path = copy_compressed(env)
    (path / "model.safetensors").unlink()
    (path / "SHA256SUMS").unlink()
    env.file = path
    return path


def _save_unsupported(model_fn: Callable[[], torch.nn.Module]) -> Callable[[Env], Callable[[], Any]]:
    """Pruning works on any BERT-like layout; only the export of a non-uniformly pruned model
    needs the PrunedBert/PrunedRoberta classes, so other families are refused there."""

    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.pruning import prune_model, save_compressed

        model = prune_model(model_fn(), batches(), method="magnitude", ratio=0.5, ffn_multiple=1)
        env.watch(model)
        return lambda: save_compressed(model, env.tmp / "out" / "ckpt")

    return build


EXPORT = [
    Case("save-pruned-xlm-roberta", _save_unsupported(_xlm_roberta), TypeError, "XLMRobertaForSequenceClassification"),
    Case("save-pruned-masked-lm", _save_unsupported(_masked_lm), TypeError, "BertForMaskedLM"),
    Case("save-existing-no-overwrite", _save_existing, FileExistsError, "pass overwrite=True"),
    Case("save-over-a-file", _save_over("file"), FileExistsError, "is not a compressed checkpoint"),
    Case("save-over-a-folder", _save_over("folder"), FileExistsError, "never replaced"),
    Case("save-parent-is-a-file", _save_over("parent"), NotADirectoryError, "is a file, not a folder"),
    Case("save-extra-dotdot", _save_extra("../escape.txt"), ValueError, "extra_files names"),
    Case("save-extra-reserved", _save_extra("SHA256SUMS"), ValueError, "extra_files names"),
    Case("load-missing", _load(_missing), FileNotFoundError, "does not exist"),
    Case("load-a-file", _load(_a_file), NotADirectoryError, "is a file"),
    Case("load-not-a-checkpoint", _load(_no_config), ValueError, "is not a compressed checkpoint"),
    Case("load-no-weights", _load(_no_weights, verify=False), ValueError, "no .safetensors weights"),
    Case("load-flipped-byte", _load(_flipped), ValueError, "does not match its SHA-256 in SHA256SUMS"),
    Case("load-truncated-checked", _load(_truncated), ValueError, "does not match its SHA-256"),
    Case("load-truncated-unchecked", _load(_truncated, verify=False), ValueError, "empty or truncated"),
    Case("load-empty-weights", _load(_empty_weights, verify=False), ValueError, "empty or truncated"),
    Case("load-listed-file-missing", _load(_listed_file_missing), FileNotFoundError, "listed in SHA256SUMS is missing"),
]  # fmt: skip


# ----------------------------------------------------------------------------------------- data


def _read(prepare: Callable[[Env], Path]) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.data import read_table

        path = prepare(env)
        return lambda: read_table(path, "data_file")

    return build


def _latin1(env: Env) -> Path:
    env.file = write_latin1_csv(env.tmp / "reviews.csv")
    return env.file


def _folder(env: Env) -> Path:
    env.file = env.tmp / "reviews.csv"
    env.file.mkdir()
    return env.file


def _fake_gz(env: Env) -> Path:
    env.file = env.tmp / "reviews.tsv.gz"
    env.file.write_text("text\tlabel\nnot gzip\t1\n")
    return env.file


def _bad_jsonl(env: Env) -> Path:
    env.file = env.tmp / "reviews.jsonl"
    env.file.write_text('{"text": "fine", "label": 1}\n{"text": "oops", \n')
    return env.file


def _dm(prepare: Callable[[Env], Path] | None = None, touch: bool = False, **kwargs: Any):
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.models import TextClassificationDataModule

        kw = dict(kwargs)
        if prepare is not None:
            kw["data_file"] = str(prepare(env))
        if not touch:
            return lambda: TextClassificationDataModule(**kw)
        dm = TextClassificationDataModule(**kw)
        return lambda: dm.num_classes  # reads the file

    return build


def _renamed_columns(env: Env) -> Path:
    env.file = write_tsv(env.tmp / "reviews.tsv", header="sentence\tpolarity")
    return env.file


def _gz_latin1(env: Env) -> Path:
    env.file = env.tmp / "reviews.csv.gz"
    env.file.write_bytes(gzip.compress("text,label\ncaf\u00e9,1\n".encode("latin-1")))
    return env.file


def _classifier(**kwargs: Any) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.models import SequenceClassifier

        return lambda: SequenceClassifier(**kwargs)

    return build


def _forward(ids: torch.Tensor) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.models import SequenceClassifier

        module = env.watch(SequenceClassifier(model_name_or_path=str(SHARED["hf"]), num_labels=2))
        return lambda: module({"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    return build


def _duplicate_header(env: Env) -> Path:
    env.file = env.tmp / "reviews.csv"
    env.file.write_text("text,label,text\n" + "".join(f"good film {i},{i % 2},x\n" for i in range(40)))
    return env.file


def _unquoted_comma(env: Env) -> Path:
    env.file = env.tmp / "reviews.csv"
    rows = "".join(f"film {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    env.file.write_text("text,label\n" + rows + "good, not great,pos\n")
    return env.file


def _extra_tab(env: Env) -> Path:
    env.file = write_tsv(env.tmp / "reviews.tsv")
    lines = env.file.read_text().splitlines()
    lines[4] = lines[4] + "\textra"
    env.file.write_text("\n".join(lines) + "\n")
    return env.file


def _short_row(env: Env) -> Path:
    env.file = env.tmp / "reviews.csv"
    env.file.write_text("text,label,source\na film,1,web\nno label here\n")
    return env.file


def _jsonl_duplicate_key(env: Env) -> Path:
    env.file = env.tmp / "reviews.jsonl"
    env.file.write_text('{"text": "fine", "label": 1}\n{"text": "good", "label": 0, "text": "x"}\n')
    return env.file


def _label_typo(env: Env) -> Path:
    env.file = env.tmp / "reviews.csv"
    rows = "".join(f"film {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    env.file.write_text("text,label\n" + rows + "bad film,Pos\n")
    return env.file


def _rare_int_class(env: Env) -> Path:
    env.file = env.tmp / "reviews.csv"
    rows = "".join(f"film {i},{i % 2}\n" for i in range(40)) + "".join(f"odd {i},2\n" for i in range(3))
    env.file.write_text("text,label\n" + rows)
    return env.file


EVIL_PY = "import pathlib\npathlib.Path(__file__).with_name('pwned').write_text('ran')\n"


def _with_code(env: Env, model_type: str, name: str = "evil_model") -> Path:
    import json

    folder = copy_hf(env, name)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModelForSequenceClassification": "evil.EvilModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(EVIL_PY)
    return folder


def _folder_with_code(model_type: str) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.models import SequenceClassifier

        folder = _with_code(env, model_type)
        env.file = folder / "config.json"
        return lambda: SequenceClassifier(model_name_or_path=str(folder))

    return build


def _dm_tokenizer_with_code(env: Env) -> Callable[[], Any]:
    from lightning_topo.models import TextClassificationDataModule

    folder = _with_code(env, "evilbert")
    dm = TextClassificationDataModule(tokenizer_name_or_path=str(folder))
    return lambda: dm.tokenizer


def _config_not_json(env: Env) -> Callable[[], Any]:
    from lightning_topo.models import SequenceClassifier

    folder = copy_hf(env, "broken")
    env.file = folder / "config.json"
    env.file.write_bytes(b"\x80\x81 not json")
    return lambda: SequenceClassifier(model_name_or_path=str(folder))


def _hf_classifier(**kwargs: Any) -> Callable[[Env], Callable[[], Any]]:
    def build(env: Env) -> Callable[[], Any]:
        from lightning_topo.models import SequenceClassifier

        return lambda: SequenceClassifier(model_name_or_path=str(SHARED["hf"]), **kwargs)

    return build


def _ckpt_of_another_architecture(env: Env) -> Callable[[], Any]:
    """What ``fit --ckpt_path`` hands to the module: a checkpoint of a wider BERT."""
    from lightning_topo.models import SequenceClassifier

    module = env.watch(SequenceClassifier(model_name_or_path=str(SHARED["hf"]), num_labels=2))
    other = tiny_model(hidden_size=48, num_attention_heads=4)
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in other.state_dict().items()},
        "hf_config": other.config.to_dict(),
    }
    return lambda: module.on_load_checkpoint(checkpoint)


def _ckpt_other_shapes_without_config(env: Env) -> Callable[[], Any]:
    from lightning_topo.models import SequenceClassifier

    module = env.watch(SequenceClassifier(model_name_or_path=str(SHARED["hf"]), num_labels=2))
    other = tiny_model(num_labels=5)
    checkpoint = {"state_dict": {f"model.{k}": v for k, v in other.state_dict().items()}}
    return lambda: module.on_load_checkpoint(checkpoint)


DATA = [
    Case("read-non-utf8", _read(_latin1), ValueError, "is not UTF-8 text: byte 0xe9"),
    Case("read-gz-non-utf8", _read(_gz_latin1), ValueError, "is not UTF-8"),
    Case("read-directory", _read(_folder), IsADirectoryError, "is a directory, not a file"),
    Case("read-missing", _read(_missing), FileNotFoundError, "data_file"),
    Case("read-fake-gzip", _read(_fake_gz), ValueError, "gzip"),
    Case("read-broken-jsonl", _read(_bad_jsonl), ValueError, "reviews.jsonl:2: not valid JSON"),
    Case("dm-data-file-directory", _dm(_folder), IsADirectoryError, "data_file"),
    Case("dm-missing-columns", _dm(_renamed_columns, touch=True), ValueError, "missing column(s) ['text']"),
    Case("dm-non-utf8", _dm(_latin1, touch=True), ValueError, "is not UTF-8"),
    Case("dm-max-length-1", _dm(max_length=1), ValueError, "max_length must be >= 2"),
    Case("dm-max-length-str", _dm(max_length="64"), TypeError, "max_length must be an int"),
    Case("dm-batch-size-float", _dm(batch_size=32.0), TypeError, "batch_size must be an int"),
    Case("dm-seed-none", _dm(seed=None), TypeError, "seed must be an int"),
    Case("dm-limit-0", _dm(limit={"train": 0}), ValueError, "limit['train']"),
    Case("dm-limit-unknown-split", _dm(limit={"dev": 5}), ValueError, "limit has unknown splits"),
    Case("dm-val-fraction-nan", _dm(val_fraction=math.nan), ValueError, "val_fraction"),
    Case("dm-label-names-str", _dm(label_names="a,b"), TypeError, "label_names must be a list"),
    Case("dm-tokenizer-object", _dm(tokenizer_name_or_path=object()), TypeError, "tokenizer_name_or_path"),
    Case("dm-train-without-val", _dm(train_file="a.csv"), ValueError, "train_file needs val_file"),
    Case("model-folder-missing", _classifier(model_name_or_path="./no_such_model"), FileNotFoundError, "'./no_such_model' does not exist"),
    Case("model-name-int", _classifier(model_name_or_path=3), TypeError, "model_name_or_path"),
    Case("model-num-labels-float", _classifier(num_labels=2.0), TypeError, "num_labels must be an int"),
    Case("model-learning-rate-nan", _classifier(learning_rate=math.nan), TypeError, "learning_rate"),
    Case("model-token-id-out-of-vocab", _forward(torch.tensor([[2, 500, 3]])), ValueError, "token id 500"),
    Case("model-sequence-too-long", _forward(torch.full((1, 80), 6)), ValueError, "data.max_length <= 64"),
    Case("read-duplicate-header", _read(_duplicate_header), ValueError, "line 1 (the header) names column(s) ['text'] more than once"),
    Case("read-unquoted-comma", _read(_unquoted_comma), ValueError, "line 42 has 3 fields but the header has 2"),
    Case("read-tsv-extra-tab", _read(_extra_tab), ValueError, "line 5 has 3 fields"),
    Case("read-short-row", _read(_short_row), ValueError, "line 3 has 1 fields but the header has 3"),
    Case("read-jsonl-duplicate-key", _read(_jsonl_duplicate_key), ValueError, "reviews.jsonl:2: the record names key 'text' twice"),
    Case("dm-duplicate-header", _dm(_duplicate_header, touch=True), ValueError, "more than once"),
    Case("dm-unquoted-comma", _dm(_unquoted_comma, touch=True), ValueError, "line 42 has 3 fields"),
    Case("dm-label-typo-class", _dm(_label_typo, touch=True), ValueError, "class(es) 'Pos' (1 rows, like 'pos') have fewer than min_class_examples=5"),
    Case("dm-rare-int-class", _dm(_rare_int_class, touch=True), ValueError, "class(es) 2 (3 rows)"),
    Case("dm-min-class-examples-0", _dm(min_class_examples=0), ValueError, "min_class_examples must be >= 1"),
    Case("dm-tokenizer-folder-with-code", _dm_tokenizer_with_code, ValueError, "never runs code from a model folder"),
    Case("model-weight-decay-negative", _classifier(weight_decay=-0.5), ValueError, "weight_decay must be >= 0"),
    Case("model-adam-epsilon-0", _classifier(adam_epsilon=0.0), ValueError, "adam_epsilon must be > 0"),
    Case("model-ignore-mismatched-str", _classifier(ignore_mismatched_sizes="yes"), TypeError, "ignore_mismatched_sizes must be True, False or None"),
    Case("model-head-of-another-size", _hf_classifier(num_labels=3, ignore_mismatched_sizes=False), ValueError, "classification head of 2 classes but num_labels=3"),
    Case("model-folder-unknown-model-type", _folder_with_code("evilbert"), ValueError, "has model_type 'evilbert', which transformers does not know"),
    Case("model-folder-foreign-auto-map", _folder_with_code("bert"), ValueError, "has an auto_map naming code in the folder ('evil.EvilConfig')"),
    Case("model-folder-config-not-json", _config_not_json, ValueError, "is not valid UTF-8 JSON"),
    Case("model-ckpt-other-architecture", _ckpt_of_another_architecture, ValueError, "the checkpoint (ckpt_path) holds a bert (hidden_size=48"),
    Case("model-ckpt-other-shapes-no-config", _ckpt_other_shapes_without_config, ValueError, "of shape (5, 32) but the model built from the config has (2, 32)"),
]  # fmt: skip

CASES = [*TOPOLOGY, *SCORES, *CALLBACKS, *PRUNING, *EXPORT, *DATA]


def test_case_ids_are_unique_and_many():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_refused(case: Case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to the working folder shows in the snapshot
    env = Env(tmp_path, monkeypatch)
    call = case.fn(env)
    files, weights = snapshot(tmp_path), [state_hash(m) for m in env.models]
    with pytest.raises(case.exc) as info:
        call()
    assert type(info.value) is case.exc, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert case.phrase in message, message
    if env.file is not None:
        assert env.file.name in message, message
    assert snapshot(tmp_path) == files, "a refused call changed or wrote files"
    assert [state_hash(m) for m in env.models] == weights, "a refused call changed the model"


# ------------------------------------------------------------------------------------------ CLIs


@dataclasses.dataclass(frozen=True)
class CliCase:
    """A bad command line: ``argv(env)`` prepares the files and returns the arguments."""

    id: str
    argv: Callable[[Env], list[str]]
    phrase: str  # in the error line; names the option, argument or file


def _without_logging_errors(err: str) -> str:
    """``err`` without the "--- Logging error ---" blocks that ``logging`` prints when a handler
    installed during an earlier test still writes to that test's closed capture stream."""
    out, skipping = [], False
    for line in err.splitlines():
        if line.startswith("--- Logging error ---"):
            skipping = True
        elif skipping and line.startswith("Arguments:"):
            skipping = False
        elif not skipping:
            out.append(line)
    return "\n".join(out)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``(exit status, the one error line)`` of ``lightning-topo ARGV``; fails on a traceback or
    on more than one error line."""
    from lightning_topo.cli import main

    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own refusals (unknown choice, missing option)
        status = exit_.code
    err = _without_logging_errors(capsys.readouterr().err)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    prefix = (
        f"lightning-topo {argv[0]}: error: " if argv[0] in ("fit", "prune") else "lightning-topo: error: "
    )
    assert len(errors) == 1 and errors[0].startswith(prefix), err
    return status, errors[0]


def new_entries(before: dict[str, tuple], after: dict[str, tuple], root: Path, run_folder: str = "") -> dict:
    """Entries of ``after`` that differ from ``before``. Under ``run_folder`` (the logger's
    ``save_dir``) Lightning's own run skeleton is allowed: the versioned folder its logger creates
    before any ``setup`` and the ``config.yaml`` that LightningCLI saves before the
    LightningModule's ``setup`` refuses (docs/errors.md, "Known limits")."""

    def skeleton(name: str) -> bool:
        path = root / name
        if not run_folder or not name.startswith(run_folder):
            return False
        return path.name == "config.yaml" or (
            path.is_dir() and all(p.is_dir() or p.name == "config.yaml" for p in path.rglob("*"))
        )

    changed = {k: v for k, v in after.items() if before.get(k) != v and not skeleton(k)}
    gone = {k: None for k in before if k not in after}
    return {**changed, **gone}


def _fit_config(env: Env, *callbacks: str) -> Path:
    src = copy_hf(env)
    data = write_tsv(env.tmp / "data.tsv")
    extra = "".join(f"\n    - {c}" for c in callbacks)
    config = env.tmp / "fit.yaml"
    config.write_text(
        f"""
model: {{model_name_or_path: {src}}}
data: {{data_file: {data}, max_length: 16, batch_size: 8}}
trainer:
  max_epochs: 1
  accelerator: cpu
  enable_progress_bar: false
  enable_model_summary: false
  logger: {{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {env.tmp / "runs"}, name: job}}}}
  callbacks:{extra or " []"}
"""
    )
    return config


def _fit(*extra: str, prepare: Callable[[Env], Any] | None = None, callbacks: tuple[str, ...] = ()):
    def argv(env: Env) -> list[str]:
        config = _fit_config(env, *callbacks)
        more = [a.format(tmp=env.tmp) for a in extra]
        if prepare is not None:
            prepare(env)
        return ["fit", "--config", str(config), *more]

    return argv


def _binary_config(env: Env) -> None:
    (env.tmp / "weights.yaml").write_bytes(bytes(range(256)) * 4)


def _broken_yaml(env: Env) -> None:
    (env.tmp / "notes.yaml").write_text("trainer:\n  max_epochs: [1\n")


def _other_ckpt(env: Env) -> None:
    """A Lightning checkpoint of a SequenceClassifier over a BERT of hidden size 48."""
    import lightning

    other = tiny_model(hidden_size=48, num_attention_heads=4)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in other.state_dict().items()},
            "hf_config": other.config.to_dict(),
            "hf_model_class": type(other).__name__,
            "pytorch-lightning_version": lightning.__version__,
            "epoch": 0,
            "global_step": 0,
            "loops": {},
            "optimizer_states": [],
            "lr_schedulers": [],
            "callbacks": {},
            "hyper_parameters": {},
        },
        env.tmp / "other.ckpt",
    )


def _small_vocab(env: Env) -> None:
    from transformers import BertTokenizer

    tiny_model(vocab_size=10).save_pretrained(env.tmp / "small_vocab")
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(env.tmp / "small_vocab")


def _existing_output(env: Env) -> None:
    (env.tmp / "pruned").mkdir()
    (env.tmp / "pruned" / "mine.txt").write_text("keep")


TP = "{class_path: lightning_topo.callbacks.TopologicalPruning, init_args: {prune_epoch: 0, output_dir: pruned}}"
TP_RATIO = "{class_path: lightning_topo.callbacks.TopologicalPruning, init_args: {ratio: 1.5}}"
PSM_EVERY = "{class_path: lightning_topo.callbacks.PersistenceScoreMonitor, init_args: {every_n_epochs: 0}}"

FIT_CASES = [
    CliCase("fit-data-file-directory", _fit("--data.data_file", "{tmp}/reviews.csv", prepare=_folder), "reviews.csv' is a directory"),
    CliCase("fit-data-file-not-utf8", _fit("--data.data_file", "{tmp}/reviews.csv", prepare=_latin1), "is not UTF-8 text"),
    CliCase("fit-data-file-missing", _fit("--data.data_file", "{tmp}/nope.csv"), "nope.csv"),
    CliCase("fit-missing-column", _fit("--data.text_column", "sentence"), "missing column(s) ['sentence']"),
    CliCase("fit-max-length-1", _fit("--data.max_length", "1"), "max_length must be >= 2"),
    CliCase("fit-torch-threads-0", _fit("--torch_threads", "0"), "torch_threads must be >= 1"),
    CliCase("fit-model-folder-missing", _fit("--model.model_name_or_path", "{tmp}/no_model"), "no_model' does not exist"),
    CliCase("fit-tokenizer-larger-than-vocab", _fit("--model.model_name_or_path", "{tmp}/small_vocab", prepare=_small_vocab), "tokenizer has 17 tokens but the model's embedding has 10 rows"),
    CliCase("fit-pruning-ratio", _fit(callbacks=(TP_RATIO,)), "fit: error: ValueError: ratio (fraction of encoder parameters kept) must be a number in (0, 1]"),
    CliCase("fit-monitor-every-n-epochs", _fit(callbacks=(PSM_EVERY,)), "fit: error: ValueError: every_n_epochs must be an int >= 1"),
    CliCase("fit-pruning-output-exists", _fit(prepare=_existing_output, callbacks=(TP,)), "output_dir 'pruned' already exists"),
    CliCase("fit-unknown-subcommand", lambda env: ["fitt", "--config", "x.yaml"], "unknown subcommand 'fitt'"),
    CliCase("fit-max-epochs-negative", _fit("--trainer.max_epochs", "-5"), "fit: error: ValueError: trainer.max_epochs must be an int >= -1"),
    CliCase("fit-gradient-clip-nan", _fit("--trainer.gradient_clip_val", ".nan"), "trainer.gradient_clip_val must be a finite number; got nan"),
    CliCase("fit-gradient-clip-negative", _fit("--trainer.gradient_clip_val", "-1.0"), "trainer.gradient_clip_val must be >= 0"),
    CliCase("fit-config-binary", _fit("--config", "{tmp}/weights.yaml", prepare=_binary_config), "weights.yaml' is not a YAML text file: byte 0x80 at offset 128"),
    CliCase("fit-config-not-yaml", _fit("--config", "{tmp}/notes.yaml", prepare=_broken_yaml), "notes.yaml' is not valid YAML at line 3"),
    CliCase("fit-weight-decay-negative", _fit("--model.weight_decay", "-0.5"), "weight_decay must be >= 0"),
    CliCase("fit-model-folder-with-code", _fit("--model.model_name_or_path", "{tmp}/evil_model", prepare=lambda env: _with_code(env, "evilbert")), "model_type 'evilbert', which transformers does not know"),
    CliCase("fit-data-duplicate-header", _fit("--data.data_file", "{tmp}/reviews.csv", prepare=_duplicate_header), "names column(s) ['text'] more than once"),
    CliCase("fit-data-unquoted-comma", _fit("--data.data_file", "{tmp}/reviews.csv", prepare=_unquoted_comma), "reviews.csv': line 42 has 3 fields"),
    CliCase("fit-data-label-typo", _fit("--data.data_file", "{tmp}/reviews.csv", prepare=_label_typo), "class(es) 'Pos' (1 rows, like 'pos')"),
    CliCase("fit-logger-folder-unwritable", _fit("--trainer.logger.init_args.save_dir", "/proc/lightning-topo-runs"), "save_dir '/proc/lightning-topo-runs' is not writable"),
    CliCase("fit-ckpt-other-architecture", _fit("--ckpt_path", "{tmp}/other.ckpt", prepare=_other_ckpt), "the checkpoint (ckpt_path) holds a bert (hidden_size=48"),
]  # fmt: skip


def _refused_in(tmp_path, case: CliCase, monkeypatch, capsys) -> dict:
    """Run ``case`` in ``tmp_path``; check exit status 2 and its phrase in the one error line;
    return the snapshot of ``tmp_path`` taken before the run."""
    monkeypatch.chdir(tmp_path)
    argv = case.argv(Env(tmp_path, monkeypatch))
    before = snapshot(tmp_path)
    status, line = run_cli(argv, capsys)
    assert status == 2
    assert case.phrase in line, line
    return before


@pytest.mark.parametrize("case", FIT_CASES, ids=lambda c: c.id)
def test_fit_cli_refuses(case: CliCase, tmp_path, monkeypatch, capsys):
    before = _refused_in(tmp_path, case, monkeypatch, capsys)
    assert not new_entries(before, snapshot(tmp_path), tmp_path, run_folder="runs"), (
        "written before the refusal"
    )
    new_ckpts = [p for p in tmp_path.rglob("*.ckpt") if str(p.relative_to(tmp_path)) not in before]
    assert not new_ckpts and not list(tmp_path.rglob("metrics.csv"))  # nothing trained


def _prune(*extra: str, prepare: Callable[[Env], Any] | None = None, source: str = "src"):
    def argv(env: Env) -> list[str]:
        copy_hf(env)
        write_tsv(env.tmp / "data.tsv")
        if prepare is not None:
            prepare(env)
        base = ["prune", "--checkpoint", str(env.tmp / source), "--output", str(env.tmp / "out")]
        more = [a.format(tmp=env.tmp) for a in extra]
        return [*base, "--accelerator", "cpu", "--recover-epochs", "0", *more]

    return argv


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears if the pickle runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious(env: Env) -> None:
    payload = {"state_dict": {}, "hyper_parameters": {"x": _Payload(env.tmp / "pwned")}}
    torch.save(payload, env.tmp / "evil.ckpt")


def _garbage(env: Env) -> None:
    (env.tmp / "model.ckpt").write_bytes(bytes(range(256)) * 3)


def _truncated_ckpt(env: Env) -> None:
    torch.save({"state_dict": {"w": torch.zeros(64)}, "hyper_parameters": {}}, env.tmp / "model.ckpt")
    data = (env.tmp / "model.ckpt").read_bytes()
    (env.tmp / "model.ckpt").write_bytes(data[: len(data) // 2])


def _plain_torch_file(env: Env) -> None:
    torch.save({"weight": torch.zeros(2)}, env.tmp / "model.ckpt")


def _folder_without_config(env: Env) -> None:
    (env.tmp / "empty_model").mkdir()


def _xlm_roberta_folder(env: Env) -> None:
    _xlm_roberta().save_pretrained(env.tmp / "xlm-roberta")


def _output_exists(env: Env) -> None:
    (env.tmp / "out").mkdir()
    (env.tmp / "out" / "mine.txt").write_text("keep")


def _blocker(env: Env) -> None:
    (env.tmp / "blocker.txt").write_text("x")


PRUNE_CASES = [
    CliCase("prune-malicious-pickle", _prune(prepare=_malicious, source="evil.ckpt"), "evil.ckpt is not a loadable checkpoint"),
    CliCase("prune-garbage-ckpt", _prune(prepare=_garbage, source="model.ckpt"), "model.ckpt is not a loadable checkpoint"),
    CliCase("prune-truncated-ckpt", _prune(prepare=_truncated_ckpt, source="model.ckpt"), "model.ckpt is not a loadable checkpoint"),
    CliCase("prune-not-lightning-ckpt", _prune(prepare=_plain_torch_file, source="model.ckpt"), "not a Lightning checkpoint"),
    CliCase("prune-missing-checkpoint", _prune(source="nope.ckpt"), "nope.ckpt does not exist"),
    CliCase("prune-folder-without-config", _prune(prepare=_folder_without_config, source="empty_model"), "without config.json"),
    CliCase("prune-unsupported-model", _prune(prepare=_xlm_roberta_folder, source="xlm-roberta"), "XLMRobertaForSequenceClassification"),
    CliCase("prune-output-exists", _prune(prepare=_output_exists), "--output"),
    CliCase("prune-output-inside-source", _prune("--output", "{tmp}/src/pruned"), "--output must not be the source"),
    CliCase("prune-output-under-a-file", _prune("--output", "{tmp}/blocker.txt/out", prepare=_blocker), "blocker.txt is a file"),
    CliCase("prune-ratio-1.5", _prune("--ratio", "1.5"), "--ratio"),
    CliCase("prune-ratio-nan", _prune("--ratio", "nan"), "--ratio"),
    CliCase("prune-calibration-batches-0", _prune("--calibration-batches", "0"), "--calibration-batches must be an int >= 1"),
    CliCase("prune-max-positions-1", _prune("--max-positions", "1"), "--max-positions"),
    CliCase("prune-min-heads-0", _prune("--min-heads", "0"), "--min-heads"),
    CliCase("prune-seed-negative", _prune("--seed", "-1"), "--seed"),
    CliCase("prune-recover-epochs-negative", _prune("--recover-epochs", "-1"), "--recover-epochs"),
    CliCase("prune-method-unknown", _prune("--method", "nope"), "--method"),
    CliCase("prune-data-file-columns", _prune("--data-file", "{tmp}/reviews.tsv", prepare=_renamed_columns), "--text-column and --label-column"),
    CliCase("prune-data-file-not-utf8", _prune("--data-file", "{tmp}/reviews.csv", prepare=_latin1), "is not UTF-8 text"),
    CliCase("prune-data-file-directory", _prune("--data-file", "{tmp}/reviews.csv", prepare=_folder), "is a directory"),
    CliCase("prune-data-file-missing", _prune("--data-file", "{tmp}/nope.csv"), "nope.csv"),
]  # fmt: skip


@pytest.mark.parametrize("case", PRUNE_CASES, ids=lambda c: c.id)
def test_prune_cli_refuses(case: CliCase, tmp_path, monkeypatch, capsys):
    before = _refused_in(tmp_path, case, monkeypatch, capsys)
    assert new_entries(before, snapshot(tmp_path), tmp_path) == {}, "written or changed before the refusal"
    assert not (tmp_path / "pwned").exists()  # the malicious pickle ran nothing


def test_malicious_payload_is_live(tmp_path):
    """Control for ``prune-malicious-pickle``: loading the same file unsafely does create the marker,
    so the absence of the marker above means that nothing ran."""
    env = Env(tmp_path, None)  # type: ignore[arg-type]
    _malicious(env)
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert (tmp_path / "pwned").exists()
