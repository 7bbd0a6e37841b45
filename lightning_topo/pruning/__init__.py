"""Topology-guided structured pruning and compressed checkpoints (``docs/pruning.md``).

Public API (imported lazily, so ``import lightning_topo.pruning`` does not import transformers
until a name is used)::

    PruningConfig, DEFAULTS                      every setting, its default and its check
    prune_model(model, dataloader, *, method="topological", ratio=0.6, units=("ffn", "heads"), ...)
    compute_importance(model, dataloader, *, method=...) -> ImportanceTable   (method: name or callable)
    plan_keep_masks(model, table, *, ratio=..., quantile=...) -> KeepMasks
    apply_keep_masks(model, masks) -> model
    check_supported(model)                       TypeError unless the pruned model can be exported
                                                 (BERT, RoBERTa, ELECTRA, DistilBERT, DeBERTa-v2/v3)
    distillation_loss(student_logits, teacher_logits, labels, *, temperature=2.0, alpha=0.5)
    save_compressed(model, path, *, tokenizer=None, overwrite=False, extra_files=None)
    load_compressed(path, *, verify=None, quantize=None)  verify_compressed, then our registered class
                                                 (trust_remote_code=False); importing it registers
                                                 the pruned classes with transformers' Auto classes;
                                                 quantize="int8": dynamic int8 Linear layers (CPU)
    verify_compressed(path, *, verify=True) -> dict  the check every reader of a compressed folder runs:
                                                 SHA256SUMS complete and matching, config ours,
                                                 weights complete; returns config.json
    quantize_int8(model, *, inplace=False) -> model   dynamic int8 quantisation of nn.Linear (CPU)
    compare_int8(dense, pruned, dataloader, ...) -> dict   accuracy, throughput, latency: fp32/int8
    export_onnx(model_or_folder, path, *, quantize=None, atol=1e-4) -> Path   torch.onnx (dynamo) graph
                                                 checked against PyTorch with ONNX Runtime (extra: onnx)
    onnx_session(path, *, threads=None) -> OnnxClassifier   logits from ONNX Runtime

Data flows config -> layout -> importance -> structured -> api; export reads layout and structured.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PruningConfig": "lightning_topo.pruning.config",
    "DEFAULTS": "lightning_topo.pruning.config",
    "prune_model": "lightning_topo.pruning.api",
    "PruneResult": "lightning_topo.pruning.api",
    "compute_importance": "lightning_topo.pruning.importance",
    "ImportanceFn": "lightning_topo.pruning.importance",
    "ImportanceContext": "lightning_topo.pruning.importance",
    "UnitOutputs": "lightning_topo.pruning.importance",
    "check_supported": "lightning_topo.pruning.layout",
    "encoder_layers": "lightning_topo.pruning.layout",
    "layer_widths": "lightning_topo.pruning.layout",
    "collect_unit_outputs": "lightning_topo.pruning.importance",
    "ImportanceTable": "lightning_topo.pruning.importance",
    "METHODS": "lightning_topo.pruning.importance",
    "plan_keep_masks": "lightning_topo.pruning.structured",
    "apply_keep_masks": "lightning_topo.pruning.structured",
    "mask_units": "lightning_topo.pruning.structured",
    "KeepMasks": "lightning_topo.pruning.structured",
    "count_encoder_parameters": "lightning_topo.pruning.structured",
    "distillation_loss": "lightning_topo.pruning.distill",
    "DISTILL_DEFAULTS": "lightning_topo.pruning.distill",
    "save_compressed": "lightning_topo.pruning.export",
    "load_compressed": "lightning_topo.pruning.export",
    "register_auto_classes": "lightning_topo.pruning.export",
    "check_output_path": "lightning_topo.pruning.export",
    "verify_manifest": "lightning_topo.pruning.export",
    "verify_compressed": "lightning_topo.pruning.export",
    "OWN_AUTO_MAPS": "lightning_topo.pruning.export",
    "FAMILIES": "lightning_topo.pruning.layout",
    "quantize_int8": "lightning_topo.pruning.quantize",
    "export_onnx": "lightning_topo.pruning.onnx_export",
    "onnx_session": "lightning_topo.pruning.onnx_export",
    "compare_int8": "lightning_topo.pruning.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_topo.pruning' has no attribute {name!r}")
