"""Paths from URLs confined to a dataset folder: no ``..``, no absolute paths, no symlink out."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from bioengine_common import NotFound, PermissionDenied

__all__ = ["DatasetPaths", "resolve_inside"]


class DatasetPaths:
    """Resolves URL paths inside one dataset folder, for the span of one request or one batch.

    The URL path is already percent-decoded once by the web framework; what remains is taken
    literally (a leftover ``%2e%2e`` is a file name, not a parent directory). Folders resolved
    once are remembered, so the chunks of one folder cost one ``lstat`` each instead of a full
    ``realpath`` (a syscall per component); a file that is itself a symlink is resolved in full.
    """

    def __init__(self, root: Path | str):
        self.real_root = os.path.realpath(root)
        self._prefix = self.real_root.rstrip(os.sep) + os.sep
        self._folders: dict[str, str] = {"": self.real_root}

    def _confined(self, real: str, relative: str) -> str:
        if real != self.real_root and not real.startswith(self._prefix):
            raise PermissionDenied(f"path '{relative}' leaves the dataset")
        return real

    def resolve(self, relative: str) -> str:
        """The real path of ``relative``; PermissionDenied if it would leave the folder,
        NotFound if it does not exist."""
        if "\x00" in relative or "\\" in relative:
            raise PermissionDenied("invalid characters in path")
        if relative.startswith("/") or ".." in PurePosixPath(relative).parts:
            raise PermissionDenied(f"path '{relative}' leaves the dataset")
        parent, _, name = relative.rpartition("/")
        if name in ("", "."):  # a folder spelled with a trailing "/" or "/.": resolve it whole
            target = self._confined(os.path.realpath(os.path.join(self.real_root, relative)), relative)
            if not os.path.exists(target):
                raise NotFound(f"'{relative}' does not exist")
            return target
        folder = self._folders.get(parent)
        if folder is None:
            real = os.path.realpath(os.path.join(self.real_root, parent))
            folder = self._folders[parent] = self._confined(real, relative)
        target = os.path.join(folder, name)
        try:
            mode = os.lstat(target).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"'{relative}' does not exist") from None
        if stat.S_ISLNK(mode):
            target = self._confined(os.path.realpath(target), relative)
            if not os.path.exists(target):
                raise NotFound(f"'{relative}' does not exist")
        return target


def resolve_inside(root: Path, relative: str) -> Path:
    """The real path of ``relative`` under ``root``, or PermissionDenied if it would leave it."""
    return Path(DatasetPaths(root).resolve(relative))
