"""The package's layers import one way, and importing it changes nothing outside it.

Layers, bottom to top (docs/design.md): ``topology`` -> ``scores`` -> ``representations``,
``data``, ``pruning`` -> ``callbacks``, ``models`` -> ``cli``. A library module never imports a
layer above it, not even inside a function (a function-local import hides a cycle, it does not
remove it).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lightning_topo

PACKAGE = Path(lightning_topo.__file__).parent

#: Top-level parts of the package that library code must never import.
APPLICATION = ("lightning_topo.callbacks", "lightning_topo.models", "lightning_topo.cli")
LIBRARY = (
    "topology", "scores", "representations", "metrics", "data", "pruning", "encoding", "loading", "analysis", "plots",
    "report",
)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``lightning_topo...`` module named by an import statement in ``path`` (any depth)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("lightning_topo")]


def _library_files() -> list[Path]:
    files = []
    for part in LIBRARY:
        target = PACKAGE / part
        if target.is_dir():
            files += sorted(target.rglob("*.py"))
        elif target.with_suffix(".py").exists():
            files.append(target.with_suffix(".py"))
    return files


def test_library_files_are_found():
    names = {p.relative_to(PACKAGE).parts[0] for p in _library_files()}
    assert {"topology", "scores", "pruning"} <= names


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_never_imports_the_application(path):
    upward = [(line, name) for line, name in _imports(path) if name.startswith(APPLICATION)]
    assert not upward, f"{path.relative_to(PACKAGE)} imports the application layer: {upward}"


def test_topology_imports_nothing_above_it():
    for path in sorted((PACKAGE / "topology").rglob("*.py")):
        above = [n for _, n in _imports(path) if not n.startswith("lightning_topo.topology")]
        assert not above, f"{path.name} imports {above}"


def test_scores_do_not_import_representations():
    for path in sorted((PACKAGE / "scores").rglob("*.py")):
        up = [n for _, n in _imports(path) if n.startswith("lightning_topo.representations")]
        assert not up, f"scores/{path.name} imports {up} (representations sits above scores)"


def test_import_has_no_side_effects_on_other_libraries():
    """``import lightning_topo`` leaves ``sys.meta_path`` alone and does not load transformers."""
    code = (
        "import json, sys\n"
        "before = [repr(f) for f in sys.meta_path]\n"
        "import lightning_topo, lightning_topo.topology, lightning_topo.scores, lightning_topo.pruning\n"
        "print(json.dumps({'meta_path_same': [repr(f) for f in sys.meta_path] == before,\n"
        "  'transformers': sorted(m for m in sys.modules if m.startswith('transformers'))}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["meta_path_same"], "import lightning_topo changed sys.meta_path"
    assert result["transformers"] == [], f"import lightning_topo imported {result['transformers'][:5]}"
