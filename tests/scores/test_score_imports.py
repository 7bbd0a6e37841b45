"""Imports point down only: batch -> representations -> topology -> scores -> callbacks / CLI."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lightning_topo"

# module (file or package folder) -> lightning_topo subpackages it must never import
FORBIDDEN = {
    "scores": ("representations", "callbacks", "models", "cli", "plots", "pruning", "data"),
    "representations": ("callbacks", "models", "cli", "plots", "pruning"),
    "plots": ("callbacks", "models", "cli"),
    "encoding.py": ("representations", "scores", "callbacks", "models", "cli", "plots"),
}

# the PSF modules; no private imports across packages (the lenses' modules are checked by their tests)
_OWN_SCORES = (
    "__init__.py",
    "checks.py",
    "sampling.py",
    "presets.py",
    "psf.py",
    "summary.py",
    "correlation.py",
)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, inside a function) for every import of ``path``."""
    tree = ast.parse(path.read_text())
    out = []
    for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]:
        for node in ast.walk(func):
            if isinstance(node, ast.Import | ast.ImportFrom):
                node.in_function = True  # type: ignore[attr-defined]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, node.lineno, getattr(node, "in_function", False)))
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno, getattr(node, "in_function", False)) for a in node.names]
    return out


@pytest.mark.parametrize("target", sorted(FORBIDDEN))
def test_no_upward_or_hidden_imports(target):
    root = PACKAGE / target
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
    assert files
    for path in files:
        for module, line, in_function in _imports(path):
            assert not any(
                module == f"lightning_topo.{bad}" or module.startswith(f"lightning_topo.{bad}.")
                for bad in FORBIDDEN[target]
            ), f"{path.name}:{line} imports {module}"
            assert not (in_function and module.startswith("lightning_topo")), (
                f"{path.name}:{line} hides an import of {module} inside a function"
            )
            if target != "scores" or path.name in _OWN_SCORES:
                assert "._" not in module, f"{path.name}:{line} imports a private module {module}"
    for path in files:  # distributed work goes through the gather/broadcast functions passed in
        assert not re.search(r"torch\.distributed\.\w+\(", path.read_text()), (
            f"{path.name} calls torch.distributed directly"
        )
