"""Sphinx configuration of the API reference (``sphinx-build -W docs/api docs/_build/api``).

Sphinx with autodoc + napoleon, as PyTorch and Lightning build their references; the guides stay
plain Markdown under ``docs/`` (rendered by GitHub, run by ``tests/test_docs.py``).
"""

project = "lightning-topo"
author = "lightning-topo developers"
release = "0.1.0"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
