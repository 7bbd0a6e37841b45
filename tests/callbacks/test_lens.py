"""LensMonitor, the base class of the lens callbacks, with a minimal lens in real tiny fits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from typing_extensions import override

from lightning_topo.callbacks.lens import _SHARED, LensMonitor
from tests.callbacks.test_tree_probe_monitor import _fit, tiny_dir, toy_csv  # noqa: F401 - fixtures


class NormLens(LensMonitor):
    """Mean L2 norm of the last layer's [CLS] vectors, from the validation forward."""

    def __init__(self, every_n_epochs: int = 1, monitor_against: str | None = "val/acc", log_prefix="norm"):
        super().__init__(
            every_n_epochs=every_n_epochs, monitor_against=monitor_against, log_prefix=log_prefix
        )
        self._norms: list[torch.Tensor] | None = None
        self.batches_seen_without_encoding = 0
        self.figure_dirs: list[Path] = []

    @override
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._norms = [] if self._should_measure(trainer) else None

    @override
    def _on_validation_batch(self, trainer, pl_module, encoded, batch) -> None:
        if self._norms is None:
            return
        if encoded is None:
            self.batches_seen_without_encoding += 1
            return
        self._norms.append(encoded.hidden_states[-1][:, 0].detach().norm(dim=-1))

    @override
    def _measure(self, trainer, pl_module):
        norms, self._norms = self._norms, None
        if not norms:
            return None
        return {self._name("mean"): float(torch.cat(norms).mean())}

    @override
    def _write_figures(self, trainer, out):
        self.figure_dirs.append(out)
        return {}


def test_shared_hooks_are_inherited_and_marked_override():
    from lightning.pytorch.callbacks import Callback

    for name in _SHARED:
        hook = getattr(NormLens, name)
        assert hook is getattr(LensMonitor, name), name  # one implementation, inherited
        assert hook is not getattr(Callback, name, None), name
        assert getattr(hook, "__override__", False), name


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_epochs": 0}, ValueError, "every_n_epochs"),
        ({"every_n_epochs": 1.5}, TypeError, "every_n_epochs"),
        ({"monitor_against": ""}, ValueError, "monitor_against must be a metric name"),
        ({"monitor_against": 3}, TypeError, "monitor_against must be a metric name"),
        ({"log_prefix": "/"}, ValueError, "log_prefix must be a non-empty string such as 'norm'"),
        ({"log_prefix": 3}, TypeError, "log_prefix must be a non-empty string such as 'norm'"),
    ],
)
def test_base_arguments_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        NormLens(**kwargs)


def test_a_lens_without_measure_or_figures_says_what_to_implement():
    class Bare(LensMonitor):
        pass

    lens = Bare(log_prefix="bare")
    with pytest.raises(NotImplementedError, match=r"Bare must implement _measure"):
        lens._measure(None, None)
    with pytest.raises(NotImplementedError, match=r"Bare must implement _write_figures"):
        lens._write_figures(None, Path("."))


@pytest.mark.slow
def test_history_correlations_and_figures_in_a_fit(tiny_dir, toy_csv, tmp_path):  # noqa: F811
    lens = NormLens()
    trainer, _ = _fit(tiny_dir, toy_csv, tmp_path, [lens], max_epochs=2, val_check_interval=0.5)
    keys = [(r["epoch"], r["step"]) for r in lens.history]
    assert len(keys) == 4 and len(set(keys)) == 4  # two validations per epoch, none from the sanity check
    assert [e for e, _ in keys] == [0, 0, 1, 1]
    assert all(r["monitor"] is not None and math.isfinite(r["monitor"]) for r in lens.history)
    last = lens.history[-1]["scores"]["norm/mean"]
    assert float(trainer.callback_metrics["norm/mean"]) == pytest.approx(last, rel=1e-6)
    assert "norm/mean/pearson_val_acc" in trainer.callback_metrics  # >= 3 records by the last epoch end
    assert lens.batches_seen_without_encoding == 0  # SequenceClassifier shares its forward
    assert lens.figure_dirs == [Path(trainer.log_dir) / "norm"]

    state = lens.state_dict()
    assert set(state) == {"history", "monitor_against"}
    fresh = NormLens(monitor_against="val/f1")
    with pytest.warns(UserWarning, match="monitor_against='val/acc'.*not restored"):
        fresh.load_state_dict(state)
    assert fresh.history == [] and fresh.monitor_against == "val/f1"  # the one rule of every monitor
    same = NormLens()
    same.load_state_dict(state)
    assert same.history == lens.history

    before = list(lens.history)
    trainer.validate(trainer.lightning_module, datamodule=trainer.datamodule, verbose=False)
    assert lens.history == before  # a stand-alone validate() does not extend the fit history


@pytest.mark.slow
def test_missing_monitor_warns_once_with_the_logged_metrics(tiny_dir, toy_csv, tmp_path):  # noqa: F811
    lens = NormLens(monitor_against="val/nothing")
    with pytest.warns(UserWarning, match=r"NormLens\(monitor_against='val/nothing'\).*val/acc"):
        _fit(tiny_dir, toy_csv, tmp_path, [lens], max_epochs=1)
    assert [r["monitor"] for r in lens.history] == [None]
