"""``lightning_topo.analyze``: the same numbers as the monitors at the same weights and data,
one row per layer, atomic files, bad input refused before any batch is read."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import labelled_token_dataset as dataset
from torch.utils.data import DataLoader

import lightning_topo
from lightning_topo.encoding import encode_batch


class Tiny(pl.LightningModule):
    """A tiny random BERT classifier whose validation_step shares its hidden states."""

    def __init__(self, config):
        super().__init__()
        from transformers import BertForSequenceClassification

        torch.manual_seed(0)
        self.model = BertForSequenceClassification(config)

    def encode(self, batch):
        return encode_batch(self.model, batch)

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def validation_step(self, batch, batch_idx):
        enc = self.encode(batch)
        self.log("val/acc", (enc.logits.argmax(-1) == batch["labels"]).float().mean())
        return enc

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit(tmp_path, config, callbacks, val):
    model = Tiny(config)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        max_epochs=1,
        callbacks=callbacks,
        logger=False,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, DataLoader(dataset(32, 0), batch_size=8), val)
    return model


def test_same_psf_as_persistence_monitor(tmp_path, tiny_config):
    from lightning_topo.callbacks import PersistenceScoreMonitor

    val = DataLoader(dataset(40, 1), batch_size=8)
    monitor = PersistenceScoreMonitor(layers="all", max_points_per_class=12, plots=False, seed=3)
    model = _fit(tmp_path, tiny_config, [monitor], val)
    logged = monitor.history[-1]["scores"]
    result = lightning_topo.analyze(
        model, val, scores=("psf",), layers="all", max_points_per_class=12, seed=3, progress=False
    )
    assert set(logged) <= set(result.metrics)
    for name, value in logged.items():
        assert result.metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name
    # the table holds the per-layer PSF and, for the deepest layer, the headline statistics
    deepest = max(result.layers)
    assert result.layers == [0, 1, 2]
    for i in result.layers:
        assert result.rows[i]["topo/psf"] == pytest.approx(logged[f"topo/psf/layer_{i}"], rel=1e-6)
    assert result.rows[deepest]["topo/h0/total_persistence"] == pytest.approx(
        logged["topo/h0/total_persistence"]
    )
    # a different seed samples other points: the comparison above can fail
    other = lightning_topo.analyze(model, val, layers="all", max_points_per_class=12, seed=4, progress=False)
    assert other.metrics["topo/psf"] != result.metrics["topo/psf"]


def test_same_geometry_as_geometry_monitor(tmp_path, tiny_config):
    from lightning_topo.callbacks import GeometryMonitor

    val = DataLoader(dataset(24, 1), batch_size=8)
    monitor = GeometryMonitor(plots=False)
    model = _fit(tmp_path, tiny_config, [monitor], val)
    logged = monitor.history[-1]["scores"]
    result = lightning_topo.analyze(model.model, val, scores="geometry", layers="all", progress=False)
    assert logged and set(logged) <= set(result.metrics)
    for name, value in logged.items():
        assert result.metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert "geometry/cone" not in result.rows[0]  # the embeddings have no attention
    assert result.rows[2]["geometry/cone"] == pytest.approx(logged["geometry/cone/layer_2"], rel=1e-5)


def test_files_and_overwrite(tmp_path, tiny_classifier):
    loader = DataLoader(dataset(24, 2), batch_size=8)
    result = lightning_topo.analyze(tiny_classifier, loader, scores=["psf", "geometry"], progress=False)
    csv = result.to_csv(tmp_path / "layers.csv").read_text().splitlines()
    assert csv[0].split(",")[:2] == ["layer", "topo/psf"]
    assert "geometry/cone" in csv[0].split(",") and len(csv) == 1 + 3
    data = json.loads(result.to_json(tmp_path / "r.json").read_text())
    assert data["metrics"]["topo/psf"] == pytest.approx(result.metrics["topo/psf"])
    assert [r["layer"] for r in data["layers"]] == [0, 1, 2]
    assert data["layers"][0]["geometry/cone"] is None  # NaN written as null
    figures = result.plot(tmp_path / "fig")
    assert {"topo_psf_per_layer", "geometry_cone_per_layer", "diagrams_layer_2"} <= set(figures)
    assert all(p.stat().st_size > 0 for p in figures.values())
    before = (tmp_path / "layers.csv").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        result.to_csv(tmp_path / "layers.csv")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        result.plot(tmp_path / "fig")
    assert (tmp_path / "layers.csv").read_bytes() == before
    result.to_csv(tmp_path / "layers.csv", overwrite=True)
    assert not list(tmp_path.glob(".*tmp*"))


def test_to_pandas(tiny_classifier):
    result = lightning_topo.analyze(tiny_classifier, DataLoader(dataset(16, 2), batch_size=8), progress=False)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            result.to_pandas()
    else:
        frame = result.to_pandas()
        assert list(frame.index) == [0, 1, 2] and "topo/psf" in frame.columns


def test_layers_subset_and_mode_restored(tiny_classifier):
    tiny_classifier.train()
    result = lightning_topo.analyze(
        tiny_classifier, DataLoader(dataset(16, 2), batch_size=8), layers=[-1, 0], progress=False
    )
    assert result.layers == [0, 2] and tiny_classifier.training
    assert math.isfinite(result.metrics["topo/psf"])


class NoIter:
    def __iter__(self):
        raise AssertionError("the dataloader was read before the arguments were checked")


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"scores": ("psf", "tree")}, ValueError, "accepted: psf, geometry"),
        ({"scores": ()}, ValueError, "accepted: psf, geometry"),
        ({"layers": 3}, ValueError, "out of range .* valid indices are -3..2"),
        ({"layers": "last"}, ValueError, "'all'"),
        ({"scores": "geometry", "layers": [0]}, ValueError, "at least one encoder layer"),
        ({"pooling": "max"}, ValueError, "pooling"),
        ({"max_samples": 0}, ValueError, "max_samples"),
        ({"attention": "x"}, ValueError, "attention"),
    ],
)
def test_bad_arguments_refused_before_reading(tiny_classifier, kwargs, error, match):
    with pytest.raises(error, match=match):
        lightning_topo.analyze(tiny_classifier, NoIter(), progress=False, **kwargs)


def test_analysis_is_a_library_module():
    """analysis.py never imports callbacks, models or cli; ``import lightning_topo`` does not load it."""
    path = Path(lightning_topo.__file__).parent / "analysis.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    upward = [
        n
        for n in names
        if n.startswith(("lightning_topo.callbacks", "lightning_topo.models", "lightning_topo.cli"))
    ]
    assert not upward
    import subprocess
    import sys

    code = "import sys, lightning_topo; print('lightning_topo.analysis' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]
    assert lightning_topo.analyze is lightning_topo.analysis.analyze


def test_identical_cls_embeddings_give_nan_with_a_warning(tiny_classifier):
    data = dataset(16, 2)
    for row in data:
        row["input_ids"] = row["input_ids"].clone()
        row["input_ids"][0] = 2  # a [CLS]-like first token: layer 0 pools the same vector everywhere
    loader = DataLoader(data, batch_size=8)
    with pytest.warns(UserWarning, match="layer 0: every point of class 0 is the same vector"):
        result = lightning_topo.analyze(tiny_classifier, loader, progress=False)
    assert math.isnan(result.rows[0]["topo/psf"]) and math.isnan(result.metrics["topo/psf/layer_0"])
    assert math.isfinite(result.rows[2]["topo/psf"])
    mean = lightning_topo.analyze(tiny_classifier, loader, pooling="mean", layers=0, progress=False)
    assert math.isfinite(mean.metrics["topo/psf"])


def test_sequences_longer_than_the_position_embeddings_are_refused_before_any_update(tiny_classifier):
    """A batch longer than the model's 64 positions: one ValueError naming both lengths, not an
    error from inside the embeddings."""
    loader = DataLoader(dataset(8, 0, seq=80), batch_size=8)
    with pytest.raises(ValueError, match="sequences of 80 tokens but the model accepts at most 64"):
        lightning_topo.analyze(tiny_classifier, loader, progress=False)
    fits = DataLoader(dataset(16, 0, seq=64), batch_size=8)  # exactly the limit is accepted
    assert lightning_topo.analyze(tiny_classifier, fits, progress=False).settings["examples"] == 16
