"""PSFEarlyStopping: noise-aware improvements, Lightning's stop reason, the reason printed."""

from __future__ import annotations

import inspect
import logging
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from torch.utils.data import DataLoader, TensorDataset

from lightning_topo.callbacks import PSFEarlyStopping


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class LogPSF(Callback):
    """Logs ``topo/psf`` = ``values[epoch]`` and ``topo/psf/std`` = ``std`` (as the monitor would)."""

    def __init__(self, values, std):
        self.values, self.std = list(values), std

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        pl_module.log("topo/psf", float(self.values[trainer.current_epoch]))
        if self.std is not None:
            pl_module.log("topo/psf/std", float(self.std))


def run(values, std, stopper, max_epochs=8):
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        callbacks=[LogPSF(values, std), stopper],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    trainer.fit(Tiny(), data, data)
    return trainer


def flat_noisy(seed: int, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    return (0.03 + 0.003 * torch.randn(n, generator=g, dtype=torch.float64)).tolist()


@pytest.mark.parametrize("seed", [0, 2, 4, 5, 8, 9])  # series on which plain EarlyStopping fires
@pytest.mark.parametrize("mode", ["min", "max"])
def test_flat_noisy_psf_does_not_stop_early_but_plain_early_stopping_does(seed, mode):
    values = flat_noisy(seed)
    plain = run(values, 0.003, EarlyStopping(monitor="topo/psf", mode=mode, patience=2, min_delta=0.0))
    assert plain.current_epoch < 8, "plain EarlyStopping should fire on this noise (the test would be void)"
    aware = run(values, 0.003, PSFEarlyStopping(mode=mode, patience=2, patience_counts="worse"))
    assert aware.current_epoch == 8 and not aware.early_stopping_callback.stopped_epoch


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
def test_noise_is_never_an_improvement_so_a_flat_psf_stops_after_patience(seed):
    # Lightning's rule (default): checks without a significant improvement count, and noise
    # rarely passes for one, so a flat series stops `patience` checks after its best, early
    values = flat_noisy(seed)
    stopper = PSFEarlyStopping(mode="min", patience=2)
    trainer = run(values, 0.003, stopper)
    best = values.index(
        min(values[: stopper.stopped_epoch + 1], key=lambda v: abs(v - float(stopper.best_score)))
    )
    assert stopper.stopped_epoch == best + 2 and trainer.current_epoch == best + 3
    assert stopper.stopped_epoch <= 4  # an improvement must beat the noise: at most 2 here
    assert stopper.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED


def test_k_sigma_sets_which_improvements_count():
    values = [0.05 - 0.003 * e for e in range(8)]  # falls 0.003 per epoch, logged std 0.003
    # k=2: threshold 2 * sqrt(2) * 0.003 = 0.0085 > 0.003: no improvement counts, stops
    strict = PSFEarlyStopping(mode="min", patience=2, k_sigma=2.0)
    assert run(values, 0.003, strict).current_epoch == 3
    # k=0.5: threshold 0.0021 < 0.003: every epoch improves, runs all 8
    loose = PSFEarlyStopping(mode="min", patience=2, k_sigma=0.5)
    assert run(values, 0.003, loose).current_epoch == 8
    assert float(loose.best_score) == pytest.approx(values[-1])
    # the same series with a tiny std (k=2: 0.00028) is an improvement every epoch
    assert run(values, 0.0001, PSFEarlyStopping(mode="min", patience=2)).current_epoch == 8


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("verbose", [False, True])
def test_the_stop_reason_is_printed_through_lightnings_logger(verbose):
    # Lightning's EarlyStopping prints through lightning.pytorch's logger, which has the console
    # handler; a logger of our own package has none (issue 23: nothing reached the console)
    logger = logging.getLogger("lightning.pytorch.callbacks.early_stopping")
    console = logging.getLogger("lightning.pytorch")
    assert console.handlers or logging.getLogger().handlers
    records = _Records()
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        stopper = PSFEarlyStopping(mode="max", patience=2, verbose=verbose)
        run([0.05 - 0.01 * e for e in range(8)], 0.001, stopper)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    stops = [m for m in records.messages if "Signaling Trainer to stop" in m]
    assert stops == [stopper.stopping_reason_message]
    assert "topo/psf" in stops[0] and "patience=2" in stops[0] and "k_sigma=2.0" in stops[0]
    assert len(records.messages) == (3 if verbose else 1)  # verbose: every check of the 3 epochs


def test_clear_decline_stops():
    values = [0.05 - 0.01 * e + 0.001 * ((-1) ** e) for e in range(8)]  # falls 0.01 per epoch
    stopper = PSFEarlyStopping(mode="max", patience=2, patience_counts="worse")
    trainer = run(values, 0.001, stopper)
    assert stopper.stopped_epoch == 2 and trainer.current_epoch == 3
    assert "worse than the best" in stopper.stopping_reason_message
    assert trainer.early_stopping_callback.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED


def test_clear_rise_is_an_improvement_in_mode_max_and_keeps_going():
    values = [0.02 + 0.01 * e for e in range(6)]
    stopper = PSFEarlyStopping(mode="max", patience=1)
    trainer = run(values, 0.001, stopper, max_epochs=6)
    assert trainer.current_epoch == 6
    assert float(stopper.best_score) == pytest.approx(values[-1])


def test_threshold_and_min_delta_floor():
    stopper = PSFEarlyStopping(mode="min", k_sigma=2.0, min_delta=0.001)
    stopper.best_std = 0.003
    assert stopper.threshold(0.004) == pytest.approx(2 * 0.005)
    assert stopper.threshold(0.0) == pytest.approx(0.006)
    stopper.best_std = 0.0
    assert stopper.threshold(0.0) == pytest.approx(0.001)  # the floor


def test_decide_counts_only_significant_changes():
    stopper = PSFEarlyStopping(mode="min", k_sigma=2.0, patience=2, patience_counts="worse")
    t = torch.tensor
    stopper.decide(t(0.030, dtype=torch.float64), 0.001)  # first value: the best
    # threshold 2 * sqrt(2) * 0.001 = 0.00283
    assert not stopper.decide(t(0.0325), 0.001)[0] and stopper.wait_count == 0  # within noise
    assert float(stopper.best_score) == pytest.approx(0.030)
    assert not stopper.decide(t(0.034), 0.001)[0] and stopper.wait_count == 1  # worse by 0.004
    assert stopper.decide(t(0.035), 0.001)[0] and stopper.wait_count == 2  # worse again: stop
    stopper.wait_count = 0
    assert not stopper.decide(t(0.026), 0.001)[0]  # better by 0.004 > 0.00283: improvement
    assert float(stopper.best_score) == pytest.approx(0.026) and stopper.best_std == 0.001


def test_non_finite_stops_when_check_finite():
    stopper = PSFEarlyStopping(mode="min")
    assert stopper.decide(torch.tensor(math.nan), 0.0)[0]
    assert stopper.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC
    assert not PSFEarlyStopping(mode="min", check_finite=False).decide(torch.tensor(math.nan), 0.0)[0]


def test_missing_std_warns_and_uses_min_delta():
    values = flat_noisy(0)
    with pytest.warns(UserWarning, match="topo/psf/std"):
        trainer = run(values, None, PSFEarlyStopping(mode="min", patience=2, min_delta=0.0))
    assert trainer.current_epoch < 8  # without a std it is plain EarlyStopping with min_delta


def test_missing_monitor_raises_when_strict():
    with pytest.raises(RuntimeError, match="not logged"):
        run([0.03] * 8, 0.001, PSFEarlyStopping(monitor="topo/nothing", mode="min"))
    trainer = run([0.03] * 3, 0.001, PSFEarlyStopping(monitor="topo/nothing", mode="min", strict=False), 3)
    assert trainer.current_epoch == 3


def test_state_dict_roundtrip():
    stopper = PSFEarlyStopping(mode="max", patience=4)
    stopper.decide(torch.tensor(0.04, dtype=torch.float64), 0.002)
    stopper.decide(torch.tensor(0.02, dtype=torch.float64), 0.002)
    state = stopper.state_dict()
    other = PSFEarlyStopping(mode="max", patience=4)
    other.load_state_dict(state)
    assert other.best_std == 0.002 and other.wait_count == 1
    assert float(other.best_score) == pytest.approx(0.04)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "up"}, ValueError, "mode"),
        ({"mode": "min", "k_sigma": -1.0}, ValueError, "k_sigma"),
        ({"mode": "min", "k_sigma": math.nan}, ValueError, "k_sigma"),
        ({"mode": "min", "min_delta": -0.1}, ValueError, "min_delta"),
        ({"mode": "min", "patience": 0}, ValueError, "patience"),
        ({"mode": "min", "patience": 1.5}, TypeError, "patience"),
        ({"mode": "min", "monitor": ""}, TypeError, "monitor"),
        ({"mode": "min", "std_monitor": 3}, TypeError, "std_monitor"),
        ({"mode": "min", "patience_counts": "never"}, ValueError, "patience_counts"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        PSFEarlyStopping(**kwargs)


def test_mode_is_required_and_hooks_are_marked_override():
    with pytest.raises(TypeError):
        PSFEarlyStopping()  # the direction of PSF must be chosen
    names = ("_evaluate_stopping_criteria", "_run_early_stopping_check", "_validate_condition_metric")
    for name in (*names, "state_dict", "load_state_dict"):
        fn = getattr(PSFEarlyStopping, name)
        assert getattr(fn, "__override__", False), name
        assert name in PSFEarlyStopping.__dict__
    assert "Example::" in inspect.getdoc(PSFEarlyStopping) and "Args:" in inspect.getdoc(PSFEarlyStopping)


def test_with_the_monitor_on_a_60_example_validation_set_the_std_is_read_and_positive(tmp_path):
    # issue 26: at or below the cap the old std (re-draw spread) was exactly 0, so the rule was
    # plain EarlyStopping; now the monitor's std comes from the examples and the stopper uses it
    from conftest import labelled_token_dataset, save_tiny_hf_folder, sequence_classifier

    from lightning_topo.callbacks import PersistenceScoreMonitor

    folder = save_tiny_hf_folder(tmp_path / "tiny")
    train = DataLoader(labelled_token_dataset(32, seed=0), batch_size=8)
    val = DataLoader(labelled_token_dataset(60, seed=1), batch_size=20)  # 30 per class, cap 512
    stopper = PSFEarlyStopping(mode="min", patience=5)
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[PersistenceScoreMonitor(plots=False, resamples=5), stopper],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    trainer.fit(sequence_classifier(folder), train, val)
    std = float(trainer.callback_metrics["topo/psf/std"])
    assert std > 0
    assert stopper.current_std == pytest.approx(std)
    assert stopper.best_std > 0


@pytest.mark.parametrize("stopper_first", [True, False])
def test_a_misspelt_monitor_fails_before_any_training_step(tmp_path, stopper_first):
    """A ``monitor`` under the PSF monitor's prefix that it never logs is refused before the first
    training step (whatever the callback order), naming the close matches; ``strict=False`` skips
    the check, and a name the module may log itself (another prefix) is left to Lightning."""
    from conftest import labelled_token_dataset, save_tiny_hf_folder, sequence_classifier

    from lightning_topo.callbacks import PersistenceScoreMonitor

    folder = save_tiny_hf_folder(tmp_path / "tiny")
    steps = []

    class CountSteps(Callback):
        def on_train_batch_end(self, *args):
            steps.append(1)

    def fit(stopper):
        steps.clear()
        monitor = PersistenceScoreMonitor(plots=False, resamples=1)
        callbacks = [stopper, monitor] if stopper_first else [monitor, stopper]
        trainer = pl.Trainer(
            max_epochs=1, callbacks=[*callbacks, CountSteps()], logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(
            sequence_classifier(folder),
            DataLoader(labelled_token_dataset(16, seed=0), batch_size=8),
            DataLoader(labelled_token_dataset(24, seed=1), batch_size=8),
        )
        return trainer

    with pytest.raises(ValueError, match=r"monitor='topo/pfs'.*did you mean 'topo/psf'.*Nothing was trained"):
        fit(PSFEarlyStopping(monitor="topo/pfs", mode="max"))
    assert steps == []
    with pytest.raises(ValueError, match="logs no metric of that name"):
        fit(PSFEarlyStopping(monitor="topo/psf/layer_7", mode="max"))
    assert steps == []
    fit(PSFEarlyStopping(monitor="topo/psf/layer_2", mode="max"))  # a real name trains
    assert len(steps) == 2
    with pytest.raises(RuntimeError, match="which is not logged"):  # not ours to know: after the epoch
        fit(PSFEarlyStopping(monitor="val/typo", mode="max"))
    assert len(steps) == 2
    fit(PSFEarlyStopping(monitor="topo/pfs", mode="max", strict=False))
    assert len(steps) == 2
