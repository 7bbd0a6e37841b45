"""Dynamic int8 quantisation of a (pruned or dense) model's ``nn.Linear`` layers, for CPU inference.

:func:`quantize_int8` replaces every ``nn.Linear`` with PyTorch's dynamically quantised Linear: the
weights are stored as int8 (one scale per tensor), the activations are quantised on the fly per
batch, and the matrix products run in int8 on the CPU (fbgemm/x86 or qnnpack engine). Embeddings,
LayerNorm and the attention softmax stay float32. No calibration data is needed.

It is meant for a model that has just been loaded (``load_compressed(path, quantize="int8")`` or
any Hugging Face model); the saved checkpoint is never touched and stays float, so it reloads
everywhere. A quantised model is for inference only (no gradients, CPU only).

PyTorch status (checked on torch 2.13): the eager-mode API used here,
``torch.ao.quantization.quantize_dynamic``, still works but is deprecated; torch emits a
``DeprecationWarning`` pointing to torchao's ``quantize_`` and a ``UserWarning`` about quantised
tensor dtypes. Those warnings are passed on unchanged (not silenced), see ``docs/pruning.md``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["quantize_int8", "check_int8_available", "is_int8", "QUANTIZE_CHOICES"]

#: Accepted values of ``load_compressed(..., quantize=...)``.
QUANTIZE_CHOICES: tuple[str | None, ...] = (None, "int8")


def check_int8_available() -> str:
    """The quantised CPU engine PyTorch will use (e.g. ``"x86"``, ``"fbgemm"``, ``"qnnpack"``).

    Raises:
        RuntimeError: this PyTorch build has no quantised CPU engine, so int8 inference cannot run.
    """
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        raise RuntimeError(
            "this PyTorch build has no quantised CPU engine (torch.backends.quantized.supported_engines "
            "is empty), so int8 quantisation cannot run; use the float model or a standard CPU build of torch"
        )
    engine = torch.backends.quantized.engine
    return engine if engine in engines else engines[0]


def _check_model(model: nn.Module) -> None:
    """Refuse what dynamic quantisation cannot handle: not a module, not on the CPU, not float32, or no
    ``nn.Linear`` to quantise (already quantised)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    tensors = [*model.parameters(), *model.buffers()]
    devices = sorted({str(t.device) for t in tensors if t.device.type != "cpu"})
    if devices:
        raise ValueError(
            f"model is on {', '.join(devices)}; int8 dynamic quantisation runs on the CPU only: "
            "move it first with model.cpu() (or load it without a device_map)"
        )
    dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()} - {"torch.float32"})
    if dtypes:
        raise ValueError(
            f"model has {', '.join(dtypes)} parameters; int8 dynamic quantisation starts from float32: "
            "convert it first with model.float()"
        )
    if not any(type(m) is nn.Linear for m in model.modules()):
        raise ValueError(
            f"{type(model).__name__} has no torch.nn.Linear layer to quantise (already quantised?); "
            "pass the float model"
        )


def quantize_int8(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Dynamic int8 quantisation of every ``nn.Linear`` of ``model`` (attention, FFN, pooler, classifier).

    Args:
        model: a float32 model on the CPU, e.g. ``load_compressed(path)`` or a dense Hugging Face
            ``BertForSequenceClassification``.
        inplace: replace the Linear layers of ``model`` itself (default ``False``: ``model`` is left
            as is and a quantised deep copy is returned).

    Returns:
        The quantised model in eval mode; its Linear layers are
        ``torch.ao.nn.quantized.dynamic.Linear`` (int8 weights, per-tensor affine). Forward calls
        take and return float tensors as before.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``model`` is not on the CPU, is not float32, or has no ``nn.Linear`` layer.
        RuntimeError: this PyTorch build has no quantised CPU engine.

    Torch 2.13 deprecates ``torch.ao.quantization.quantize_dynamic`` (used here) in favour of
    torchao; its ``DeprecationWarning`` is passed on, not silenced.
    """
    _check_model(model)
    engine = check_int8_available()
    if torch.backends.quantized.engine != engine:
        torch.backends.quantized.engine = engine
    from torch.ao.quantization import quantize_dynamic

    target = model if inplace else copy.deepcopy(model)
    target.eval()
    return quantize_dynamic(target, {nn.Linear}, dtype=torch.qint8, inplace=True)


def is_int8(model: nn.Module) -> bool:
    """Whether ``model`` holds dynamically quantised Linear layers and no float ``nn.Linear``."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    modules = list(model.modules())
    return any(isinstance(m, DynamicLinear) for m in modules) and not any(
        type(m) is nn.Linear for m in modules
    )
