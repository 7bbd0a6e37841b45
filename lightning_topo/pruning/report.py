"""Accuracy and CPU speed of float and int8 models side by side (``lightning-topo prune --int8-report``,
``benchmarks/int8.py``).

:func:`measure` evaluates any set of models on one dataloader and times them on the CPU,
alternating the models call by call so that load from other processes hits all of them alike (their
ratios stay meaningful on a shared machine). :func:`compare_int8` applies it to the four variants
dense fp32, pruned fp32, dense int8 and pruned int8; :func:`format_table` prints the result.

Timing inputs are random token ids (seeded) with a full attention mask: throughput at batch 32 x
length 64 (sequences/s) and latency at batch 1 x length 64 (milliseconds), each the median over
``reps`` timed calls after a warm-up.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["VARIANTS", "accuracy", "time_alternating", "measure", "compare_int8", "format_table"]

#: Row names of :func:`compare_int8`, in order; the first is the reference for speed-ups.
VARIANTS = ("dense fp32", "pruned fp32", "dense int8", "pruned int8")
_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


@torch.no_grad()
def accuracy(model: nn.Module, dataloader: Iterable[Mapping[str, Any]]) -> float:
    """Fraction of examples whose arg-max logit equals the label.

    Args:
        model: a sequence classifier (Hugging Face style: keyword inputs, ``.logits`` of shape
            ``(batch, num_labels)``), run in eval mode on the CPU.
        dataloader: batches with ``input_ids`` (``(batch, seq)``), optionally ``attention_mask`` and
            ``token_type_ids``, and ``labels`` (or ``label``) of shape ``(batch,)``.

    Raises:
        ValueError: a batch has no labels, or the dataloader is empty.
    """
    model.eval()
    correct = total = 0
    for batch in dataloader:
        labels = batch.get("labels", batch.get("label"))
        if labels is None:
            raise ValueError(f"dataloader batches need 'labels' for accuracy; got keys {sorted(batch)}")
        inputs = {k: batch[k].cpu() for k in _INPUT_KEYS if k in batch}
        pred = _logits(model(**inputs)).argmax(-1)
        correct += int((pred == labels.cpu()).sum())
        total += int(labels.numel())
    if total == 0:
        raise ValueError("the dataloader yielded no examples; accuracy needs a non-empty split")
    return correct / total


def _timing_inputs(model: nn.Module, batch_size: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random token ids in ``[low, vocab_size)`` avoiding the special low ids, full mask."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 1000)
    low = min(1000, vocab // 4)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, vocab, (batch_size, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.no_grad()
def time_alternating(
    models: Mapping[str, nn.Module],
    *,
    batch_size: int,
    length: int = 64,
    reps: int = 20,
    warmup: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Median seconds per forward call of each model, the models called in turn in every rep.

    Args:
        models: name -> model (all on the CPU, same vocabulary).
        batch_size, length: shape of the random input batch ``(batch_size, length)``.
        reps: timed calls per model (median taken); ``warmup`` untimed calls per model first.

    Returns:
        ``{name: median seconds}``.
    """
    if reps < 1 or warmup < 0 or batch_size < 1 or length < 1:
        raise ValueError(
            f"reps, batch_size and length must be >= 1 and warmup >= 0; got reps={reps}, "
            f"batch_size={batch_size}, length={length}, warmup={warmup}"
        )
    first = next(iter(models.values()))
    inputs = _timing_inputs(first, batch_size, length, seed)
    for model in models.values():
        model.eval()
        for _ in range(warmup):
            model(**inputs)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(reps):
        for name, model in models.items():
            start = time.perf_counter()
            model(**inputs)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[int]:
    old = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be >= 1 (or None: keep torch's setting); got {n}")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def _state_dict_mb(model: nn.Module) -> float:
    """Size of ``torch.save(model.state_dict())`` in MiB (int8 packed weights included)."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 2**20


def measure(
    models: Mapping[str, nn.Module],
    dataloader: Iterable[Mapping[str, Any]] | None,
    *,
    batch_size: int = 32,
    length: int = 64,
    reps: int = 20,
    latency_reps: int = 50,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy, throughput, latency and size of each model; speed-ups relative to the first one.

    Args:
        models: name -> CPU model (float or int8); the first is the reference.
        dataloader: labelled batches for :func:`accuracy` (re-iterated once per model), or ``None``
            to skip accuracy.
        batch_size, length: throughput batch (default 32 x 64); latency uses batch 1 x ``length``.
        reps, latency_reps: timed calls per model (medians), models alternated call by call.
        threads: ``torch.set_num_threads`` while measuring (restored afterwards); ``None`` keeps it.

    Returns:
        A dict with ``rows`` (name -> ``accuracy``, ``accuracy_delta_points``, ``throughput_seq_s``,
        ``speedup``, ``latency_ms``, ``latency_speedup``, ``state_dict_mb``) and ``settings`` (how it
        was measured). The accuracy keys are ``None`` without a dataloader; deltas and speed-ups are
        against the first model.
    """
    if not models:
        raise ValueError("models must name at least one model")
    with _threads(threads) as n_threads:
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        acc = {name: None if dataloader is None else accuracy(m, dataloader) for name, m in models.items()}
        batch_s = time_alternating(models, batch_size=batch_size, length=length, reps=reps, seed=seed)
        single_s = time_alternating(models, batch_size=1, length=length, reps=latency_reps, seed=seed)
    ref = next(iter(models))
    rows = {}
    for name, model in models.items():
        rows[name] = {
            "accuracy": acc[name],
            "accuracy_delta_points": None if acc[name] is None else 100 * (acc[name] - acc[ref]),
            "throughput_seq_s": batch_size / batch_s[name],
            "speedup": batch_s[ref] / batch_s[name],
            "latency_ms": 1000 * single_s[name],
            "latency_speedup": single_s[ref] / single_s[name],
            "state_dict_mb": _state_dict_mb(model),
        }
    settings = {
        "reference": ref,
        "throughput_batch": [batch_size, length],
        "latency_batch": [1, length],
        "reps": reps,
        "latency_reps": latency_reps,
        "threads": n_threads,
        "timing": "CPU; models alternated call by call; median of the timed calls; random token ids",
        "quantized_engine": torch.backends.quantized.engine,
        "torch": torch.__version__,
        "processor": platform.processor() or platform.machine(),
        "load_average_at_start": load,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return {"rows": rows, "settings": settings}


def compare_int8(
    dense: nn.Module, pruned: nn.Module, dataloader: Iterable[Mapping[str, Any]] | None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`measure` of dense fp32, pruned fp32, dense int8 and pruned int8 (rows named as in
    :data:`VARIANTS`; speed-ups and accuracy deltas against dense fp32).

    Args:
        dense, pruned: float32 CPU sequence classifiers (e.g. the source model and
            ``load_compressed(folder)``); neither is modified (the int8 variants are quantised copies).
        dataloader: labelled validation batches, or ``None`` (no accuracy).
        kwargs: passed to :func:`measure` (``reps``, ``latency_reps``, ``threads``, ...).
    """
    from lightning_topo.pruning.quantize import quantize_int8

    dense.eval()
    pruned.eval()
    models = dict(zip(VARIANTS, (dense, pruned, quantize_int8(dense), quantize_int8(pruned)), strict=True))
    return measure(models, dataloader, **kwargs)


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(report: Mapping[str, Any]) -> str:
    """A plain-text table of a :func:`measure` / :func:`compare_int8` result, one row per model."""
    s = report["settings"]
    b, n = s["throughput_batch"]
    head = (
        f"{'model':<20s} {'accuracy':>8s} {'delta':>7s} {f'seq/s@{b}x{n}':>12s} {'speedup':>7s} "
        f"{f'ms@1x{n}':>9s} {'speedup':>7s} {'MiB':>7s}"
    )
    lines = [head, "-" * len(head)]
    for name, r in report["rows"].items():
        lines.append(
            f"{name:<20s} {_fmt(r['accuracy'], '8.4f')} {_fmt(r['accuracy_delta_points'], '+7.2f')} "
            f"{r['throughput_seq_s']:12.1f} {r['speedup']:6.2f}x {r['latency_ms']:9.2f} "
            f"{r['latency_speedup']:6.2f}x {r['state_dict_mb']:7.1f}"
        )
    lines.append(
        f"({s['threads']} threads, median of {s['reps']} / {s['latency_reps']} timed calls, "
        f"engine {s['quantized_engine']}; delta in points and speed-ups against {s['reference']})"
    )
    return "\n".join(lines)
