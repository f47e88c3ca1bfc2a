"""Which files of a 0.6.0 app reach its replicas.

The artifact root is the module directory: ``entry: pkg.module:Class`` is
``<root>/pkg/module.py`` and the root goes on ``sys.path`` in the replica. What an author keeps
beside the code for people (the manifest, READMEs, Markdown, notebooks, images and PDFs, the
``frontend/`` that Hypha serves statically) and what tools leave behind (``__pycache__/``,
``*.pyc``/``*.pyo``, ``.git*`` and every other dot-path) never reach replicas. Native
extensions (``*.so``) and data files the code reads do.

The runtime that places an app's source for Ray uses :func:`replica_files` on the artifact's
file names (relative POSIX paths) and ships exactly those.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath

__all__ = ["EXCLUDED_SUFFIXES", "reaches_replicas", "replica_files"]

#: File name endings (lower case) that stay in the artifact only.
EXCLUDED_SUFFIXES = (
    ".md",
    ".ipynb",
    ".pyc",
    ".pyo",
    ".pdf",
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".svg",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ico",
)
_ROOT_ONLY = ("manifest.yaml", "manifest.yml")


def reaches_replicas(name: str) -> bool:
    """True when the artifact file ``name`` (relative POSIX path) is shipped to the replicas."""
    path = PurePosixPath(name)
    parts = path.parts
    if not parts or path.is_absolute():
        return False
    if any(part.startswith(".") for part in parts):  # .git/, .gitignore, .env, .vscode/, ...
        return False
    if "__pycache__" in parts[:-1] or (len(parts) > 1 and parts[0] == "frontend"):
        return False
    base = parts[-1].lower()
    if len(parts) == 1 and base in _ROOT_ONLY:
        return False
    return not (base.startswith("readme") or base.endswith(EXCLUDED_SUFFIXES))


def replica_files(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that reach the replicas, sorted."""
    return sorted(name for name in set(names) if reaches_replicas(name))
