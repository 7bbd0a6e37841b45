"""ONNX export of a compressed checkpoint: ONNX Runtime logits equal PyTorch's within 1e-4."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from lightning_topo.pruning import KeepMasks, apply_keep_masks, load_compressed, save_compressed  # noqa: E402
from lightning_topo.pruning.onnx_export import export_onnx, onnx_session  # noqa: E402


def _split(seed: int, n_batches: int = 3):
    """A padded 'validation split' of random token batches of varied shapes (none is the tracing example's)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for batch, seq in [(8, 12), (5, 23), (1, 7)][:n_batches]:
        ids = torch.randint(5, 128, (batch, seq), generator=g)
        mask = (torch.arange(seq)[None, :] < torch.randint(2, seq + 1, (batch, 1), generator=g)).long()
        mask[0] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@pytest.fixture
def compressed(tiny_classifier, tmp_path):
    masks = KeepMasks(
        ffn=[torch.arange(64) < 40, torch.arange(64) % 2 == 0],
        heads=[torch.tensor([True, False, True, True]), torch.tensor([False, True, False, False])],
    )
    model = apply_keep_masks(copy.deepcopy(tiny_classifier), masks)
    with torch.no_grad():  # visible logits
        model.classifier.weight.mul_(50.0)
    return save_compressed(model, tmp_path / "ckpt")


def test_exported_folder_matches_pytorch_on_the_validation_split(compressed, tmp_path):
    path = export_onnx(compressed, tmp_path / "onnx" / "model.onnx")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no leftovers
    reference = load_compressed(compressed).eval()
    session = onnx_session(path, threads=1)
    for batch in _split(0):
        with torch.no_grad():
            want = reference(**batch).logits
        got = session(batch["input_ids"], batch["attention_mask"])
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert float(want.abs().max()) > 1e-2  # the comparison is not between near-zero logits
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_onnx(compressed, path)


def test_bad_arguments_are_refused_before_any_work(compressed, tiny_classifier, tmp_path):
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_onnx(compressed, tmp_path / "model.bin")
    with pytest.raises(ValueError, match="quantize must be None or 'int8'"):
        export_onnx(compressed, tmp_path / "m.onnx", quantize="int4")
    with pytest.raises(ValueError, match="float32 model on the CPU"):
        export_onnx(copy.deepcopy(tiny_classifier).double(), tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(tmp_path / "nowhere", tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="sequence classifier or the folder"):
        export_onnx(42, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_int8_graph_runs_and_stays_close(compressed, tmp_path):
    path = export_onnx(compressed, tmp_path / "int8.onnx", quantize="int8")
    reference = load_compressed(compressed).eval()
    session = onnx_session(path, threads=1)
    batch = _split(1, 1)[0]
    with torch.no_grad():
        want = reference(**batch).logits
    got = session(batch["input_ids"], batch["attention_mask"])
    assert torch.isfinite(got).all()
    assert float((got - want).abs().max()) < 0.2 * float(want.abs().max()) + 1e-3
    ops = {node.op_type for node in __import__("onnx").load(str(path)).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"example_length": 1}, ValueError, "example_length must be an int >= 2"),
        ({"example_length": 16.0}, TypeError, "example_length must be an int >= 2"),
        ({"atol": 0.0}, ValueError, "atol must be a finite number > 0.0"),
        ({"atol": "1e-4"}, TypeError, "atol must be a finite number > 0.0"),
        ({"quantize": "int4"}, ValueError, "quantize must be None or 'int8'"),
    ],
)
def test_export_settings_refused_before_anything_is_read_or_written(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        export_onnx(tmp_path / "no_such_folder", tmp_path / "model.onnx", **kwargs)
    assert type(info.value) is error and not (tmp_path / "model.onnx").exists()
