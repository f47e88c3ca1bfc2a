"""Paths from URLs confined to a dataset folder: no ``..``, no absolute paths, no symlink out."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from bioengine_common import NotFound, PermissionDenied

__all__ = ["resolve_inside"]


def resolve_inside(root: Path, relative: str) -> Path:
    """The real path of ``relative`` under ``root``, or PermissionDenied if it would leave it.

    The URL path is already percent-decoded once by the web framework; what remains is taken
    literally (a leftover ``%2e%2e`` is a file name, not a parent directory).
    """
    if "\x00" in relative or "\\" in relative:
        raise PermissionDenied("invalid characters in path")
    parts = PurePosixPath(relative).parts
    if relative.startswith("/") or any(part == ".." for part in parts):
        raise PermissionDenied(f"path '{relative}' leaves the dataset")
    real_root = root.resolve()
    target = (real_root / relative).resolve()
    if target != real_root and real_root not in target.parents:
        raise PermissionDenied(f"path '{relative}' leaves the dataset")
    if not target.exists():
        raise NotFound(f"'{relative}' does not exist")
    return target
