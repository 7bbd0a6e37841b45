"""Registers ``pruned_bert`` with the transformers Auto classes without importing transformers eagerly.

``import lightning_topo`` imports this module. Importing BERT's modeling code costs seconds, so
registration is deferred: if ``transformers.models.auto.modeling_auto`` is already imported we
register at once; otherwise a ``sys.meta_path`` post-import hook registers right after transformers
imports its Auto classes (which happens before any ``AutoConfig``/``AutoModel*`` call can run).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_WATCHED = ("transformers.models.auto.modeling_auto", "transformers.models.auto.configuration_auto")


def _register(config_only: bool = False) -> None:
    from lightning_topo.pruning.export import register_auto_classes

    register_auto_classes(config_only=config_only)


class _AutoClassesHook(importlib.abc.MetaPathFinder):
    """Wraps the loader of the watched modules so that registration runs once both are executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _WATCHED:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module, _original=original):
            _original(module)
            if fullname == _WATCHED[0]:  # AutoModel* classes exist now
                _uninstall()
                _register()
            elif _WATCHED[0] not in sys.modules:  # AutoConfig alone; models follow when imported
                _register(config_only=True)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_HOOK = _AutoClassesHook()


def _uninstall() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def install() -> None:
    """Register now if transformers' Auto classes are loaded, else when they are."""
    if _WATCHED[0] in sys.modules:
        _register()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


install()
