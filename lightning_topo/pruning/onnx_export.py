"""ONNX export of a (compressed) sequence classifier, checked against PyTorch with ONNX Runtime.

``export_onnx(model_or_folder, path)`` traces the model with ``torch.onnx.export(dynamo=True)``
(torch.export + onnxscript; the TorchScript exporter traces the attention mask of transformers'
SDPA path as a constant and gives wrong logits for padded batches, so it is not used), with a
dynamic batch and sequence axis. The graph takes ``input_ids`` and ``attention_mask`` (int64,
``(batch, seq)``) and returns ``logits`` ``(batch, num_labels)``. Before the file is moved into
place, ONNX Runtime runs it on two padded random batches of other shapes than the example and the
logits must match PyTorch's within ``atol`` (default ``1e-4``); otherwise nothing is written.

``quantize="int8"`` adds ONNX Runtime's dynamic int8 quantisation of the MatMul weights
(``onnxruntime.quantization.quantize_dynamic``, per-tensor int8 weights, activations quantised at
run time), the counterpart of :func:`~lightning_topo.pruning.quantize.quantize_int8` in PyTorch;
its logits are not held to ``atol`` (quantisation changes them), only checked to be finite.

Optional dependencies (the ``onnx`` extra: ``onnx``, ``onnxscript``, ``onnxruntime``) are imported
when a function here runs; without them the call fails with one line naming the extra, before any
work.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_topo.data.files import write_text_atomic
from lightning_topo.pruning.export import load_compressed
from lightning_topo.scores.checks import check_int, check_real

__all__ = ["ONNX_INPUTS", "export_onnx", "OnnxClassifier", "onnx_session"]

#: The graph's inputs, in order.
ONNX_INPUTS = ("input_ids", "attention_mask")
_EXTRA = "pip install 'lightning-topo[onnx]' (onnx, onnxscript, onnxruntime)"


def _require(*modules: str) -> list[Any]:
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as err:
        raise ImportError(f"ONNX export needs {err.name}: {_EXTRA}") from None


class _Logits(nn.Module):
    """``(input_ids, attention_mask) -> logits`` of a Hugging Face sequence classifier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _example(vocab: int, batch: int, length: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2 :] = 0  # a padded row: the mask must not be traced as a constant
    return ids, mask


class OnnxClassifier:
    """An ONNX Runtime session of a graph written by :func:`export_onnx` (CPU provider).

    Call it with ``input_ids`` and ``attention_mask`` (tensors or arrays ``(batch, seq)``) to get
    the logits as a float32 tensor ``(batch, num_labels)``.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (``None``: its default, all cores).
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        (ort,) = _require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {path}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 -- onnxruntime raises its own exception types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"ONNX Runtime cannot load {path}: {first}") from None
        names = [i.name for i in self.session.get_inputs()]
        if names != list(ONNX_INPUTS):
            raise ValueError(
                f"{path} takes inputs {names}; a graph from export_onnx takes {list(ONNX_INPUTS)}"
            )
        self.path = path

    def __call__(self, input_ids: Any, attention_mask: Any) -> Tensor:
        feed = {
            "input_ids": np.ascontiguousarray(np.asarray(input_ids, dtype=np.int64)),
            "attention_mask": np.ascontiguousarray(np.asarray(attention_mask, dtype=np.int64)),
        }
        return torch.from_numpy(self.session.run(["logits"], feed)[0])

    def logits(self, batches: Iterable[Mapping[str, Any]]) -> Tensor:
        """Logits of every batch (dicts with ``input_ids`` and ``attention_mask``), concatenated."""
        return torch.cat([self(b["input_ids"], b["attention_mask"]) for b in batches])


def onnx_session(path: str | os.PathLike[str], *, threads: int | None = None) -> OnnxClassifier:
    """:class:`OnnxClassifier` for ``path``."""
    return OnnxClassifier(path, threads=threads)


def _check_target(path: Path, overwrite: bool) -> None:
    if path.suffix != ".onnx":
        raise ValueError(f"export_onnx path must end in .onnx; got {str(path)!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True to replace it, or choose another path"
        )
    if path.exists() and not path.is_file():
        raise FileExistsError(f"{path} exists and is not a file; it is never replaced")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"cannot create {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: no write permission in {ancestor}")


def _as_model(model_or_folder: nn.Module | str | os.PathLike[str]) -> nn.Module:
    if isinstance(model_or_folder, nn.Module):
        model = model_or_folder
    elif isinstance(model_or_folder, str | os.PathLike):
        model = load_compressed(model_or_folder)  # verified: SHA256SUMS, config, weights
    else:
        raise TypeError(
            "export_onnx takes a Hugging Face sequence classifier or the folder of a compressed checkpoint; "
            f"got {type(model_or_folder).__name__}"
        )
    params = list(model.parameters())
    if not params or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
        raise ValueError("export_onnx needs a float32 model on the CPU; call model.cpu().float() first")
    if not hasattr(getattr(model, "config", None), "vocab_size"):
        raise TypeError(f"export_onnx needs a Hugging Face model with a config; got {type(model).__name__}")
    return model


def export_onnx(
    model_or_folder: nn.Module | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    quantize: str | None = None,
    opset: int | None = None,
    atol: float = 1e-4,
    example_length: int = 16,
) -> Path:
    """Export a sequence classifier (or a compressed checkpoint folder) to one ``.onnx`` file.

    Args:
        model_or_folder: a float32 CPU Hugging Face ``*ForSequenceClassification`` (pruned or not;
            not modified, run in eval mode), or the folder of a compressed checkpoint (read with
            :func:`~lightning_topo.pruning.load_compressed`, which verifies it).
        path: the ``.onnx`` file to write (written to a hidden sibling, checked, then renamed).
        overwrite: replace an existing file (default ``False``: ``FileExistsError``).
        quantize: ``None`` (float32 graph) or ``"int8"`` (ONNX Runtime dynamic int8 weights).
        opset: ONNX opset (``None``: the exporter's default).
        atol: the largest allowed ``|ONNX Runtime - PyTorch|`` logit difference of the float graph.
        example_length: sequence length of the tracing example (``>= 2``; the graph's sequence
            axis is dynamic, up to the model's ``max_position_embeddings``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ImportError: the ``onnx`` extra is missing (one line, before any work).
        FileExistsError, NotADirectoryError, PermissionError: ``path`` cannot be written.
        ValueError: a bad argument, a model not float32 on the CPU, or ONNX Runtime logits that
            differ from PyTorch's by more than ``atol`` (nothing is written).
        TypeError: not a Hugging Face model or folder.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8'; got {quantize!r}")
    check_int(example_length, "example_length", minimum=2)
    check_real(atol, "atol", minimum=0.0, strict=True)
    _require("onnx", "onnxscript", "onnxruntime")
    path = Path(path)
    _check_target(path, overwrite)
    model = _as_model(model_or_folder)
    was_training = model.training
    model.eval()
    try:
        wrapped = _Logits(model)
        vocab = int(model.config.vocab_size)
        example = _example(vocab, 2, example_length, seed=0)

        def write(staged: Path) -> None:
            _trace(wrapped, example, staged, opset)
            if quantize == "int8":
                _quantize_int8(staged)
            _check_against_torch(wrapped, staged, vocab, example_length, atol=None if quantize else atol)

        write_text_atomic(path, write, overwrite=True)  # _check_target refused an unwanted overwrite
    finally:
        model.train(was_training)
    return path


def _trace(wrapped: nn.Module, example: tuple[Tensor, Tensor], file: Path, opset: int | None) -> None:
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    kwargs: dict[str, Any] = {} if opset is None else {"opset_version": int(opset)}
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            example,
            str(file),
            input_names=list(ONNX_INPUTS),
            output_names=["logits"],
            dynamic_shapes=dynamic,
            dynamo=True,
            external_data=False,
            verbose=False,
            **kwargs,
        )


def _quantize_int8(file: Path) -> None:
    (quantization,) = _require("onnxruntime.quantization")
    quantized = file.with_name(file.name + ".int8.onnx")
    try:
        quantization.quantize_dynamic(str(file), str(quantized), weight_type=quantization.QuantType.QInt8)
        os.replace(quantized, file)
    finally:
        quantized.unlink(missing_ok=True)


def _check_against_torch(
    wrapped: nn.Module, file: Path, vocab: int, length: int, *, atol: float | None
) -> None:
    session = OnnxClassifier(file)
    for batch, seq, seed in ((3, length + 3, 1), (1, max(2, length - 5), 2)):
        ids, mask = _example(vocab, batch, seq, seed)
        got = session(ids, mask)
        with torch.no_grad():
            want = wrapped(ids, mask).float()
        if got.shape != want.shape or not bool(torch.isfinite(got).all()):
            raise ValueError(
                f"the ONNX graph gives logits of shape {tuple(got.shape)} or non-finite values; nothing was written"
            )
        diff = float((got - want).abs().max())
        if atol is not None and diff > atol:
            raise ValueError(
                f"ONNX Runtime logits differ from PyTorch's by {diff:.3g} (> atol={atol}) on a batch of "
                f"shape {(batch, seq)}; nothing was written"
            )
