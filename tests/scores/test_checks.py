"""The shared argument checks: one policy, TypeError for a wrong type and ValueError for a wrong value."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_topo.scores.checks import check_int, check_text


def test_check_text_types_values_paths_and_none():
    assert check_text("net", "model_attr") == "net"
    assert check_text(None, "split_column", allow_none=True) is None
    assert check_text(Path("/tmp/out"), "output_dir", path=True) == "/tmp/out"
    with pytest.raises(TypeError, match=r"output_dir must be a folder path; got PosixPath\('/tmp'\) \(PosixPath\)"):
        check_text(Path("/tmp"), "output_dir", "a folder path")  # a path only where paths are meant
    with pytest.raises(TypeError, match=r"model_attr must be a non-empty string; got 3 \(int\)"):
        check_text(3, "model_attr")
    with pytest.raises(TypeError, match="got None"):
        check_text(None, "text_column")
    for blank in ("", "   "):
        with pytest.raises(ValueError, match="text_column must be a non-empty string"):
            check_text(blank, "text_column")


def test_check_int_policy_and_hint():
    assert check_int(3, "n", minimum=1) == 3
    with pytest.raises(TypeError, match=r"n must be an int >= 1 \(one per layer\); got 2.0 \(float\)"):
        check_int(2.0, "n", minimum=1, hint=" (one per layer)")
    with pytest.raises(TypeError, match="got True"):
        check_int(True, "n")
    with pytest.raises(ValueError, match="n must be an int >= 1 or None; got 0"):
        check_int(0, "n", minimum=1, allow_none=True)
