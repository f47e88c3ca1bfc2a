"""The datasets of a data directory: each folder with a ``manifest.yaml`` (or ``.yml``).

Scanning is cheap (one ``stat`` per dataset folder and manifest, and a walk that stops at each
``.zarr`` folder) and runs in a thread; a
changed manifest, a new folder or a removed one shows up on the next scan. A bad manifest is
reported with the reason and skipped; it never stops the others.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["Dataset", "DatasetManifest", "DatasetRegistry", "scan_data_dir"]

MANIFEST_NAMES = ("manifest.yaml", "manifest.yml")


class DatasetManifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = Field(None, description="Dataset id; default the folder name.")
    name: str | None = None
    description: str = ""
    authorized_users: list[str] = Field(
        default_factory=list,
        description="User ids or emails that may read; '*' = every signed-in user. Empty: admins only.",
    )
    public: bool = Field(False, description="Anyone may read, anonymous users included.")

    @field_validator("authorized_users", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value in {".", ".."}):
            raise ValueError("must be a non-empty name without '/'")
        return value


class Dataset(BaseModel):
    id: str
    root: Path
    manifest: DatasetManifest
    zarr_stores: list[str]
    manifest_mtime: float

    def info(self, size_bytes: int | None = None) -> dict[str, Any]:
        """What a reader is told; ``size_bytes`` only once measured (see ``measure_sizes``)."""
        manifest = self.manifest.model_dump(exclude={"authorized_users"})
        return {
            "id": self.id,
            "name": self.manifest.name or self.id,
            "description": self.manifest.description,
            "public": self.manifest.public,
            "zarr_stores": self.zarr_stores,
            "manifest": manifest,
            **({"size_bytes": size_bytes} if size_bytes is not None else {}),
        }


def folder_size(root: Path) -> int:
    """Bytes of the regular files under ``root`` (symbolic links not followed)."""
    total = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:  # removed while walking
                    continue
    return total


def _zarr_stores(root: Path) -> list[str]:
    stores = []
    for current, dirs, _files in os.walk(root, followlinks=False):
        for name in list(dirs):
            if name.endswith(".zarr"):
                stores.append(str((Path(current) / name).relative_to(root)))
                dirs.remove(name)  # do not walk into chunk folders
    return sorted(stores)


def _load(folder: Path, manifest_path: Path) -> Dataset:
    raw = yaml.safe_load(manifest_path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError("the manifest must be a mapping")
    manifest = DatasetManifest.model_validate(raw)
    return Dataset(
        id=manifest.id or folder.name, root=folder.resolve(), manifest=manifest,
        zarr_stores=_zarr_stores(folder), manifest_mtime=manifest_path.stat().st_mtime,
    )  # fmt: skip


def scan_data_dir(data_dir: Path) -> tuple[dict[str, Dataset], dict[str, str]]:
    """Datasets by id, and problems by folder name."""
    datasets: dict[str, Dataset] = {}
    problems: dict[str, str] = {}
    if not data_dir.is_dir():
        return datasets, problems
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        manifest_path = next((folder / n for n in MANIFEST_NAMES if (folder / n).is_file()), None)
        if manifest_path is None:
            continue
        try:
            dataset = _load(folder, manifest_path)
        except (OSError, yaml.YAMLError, ValueError, ValidationError) as exc:
            problems[folder.name] = f"{manifest_path.name}: {' '.join(str(exc).split())}"
            continue
        if dataset.id in datasets:
            problems[folder.name] = (
                f"duplicate dataset id '{dataset.id}' (also {datasets[dataset.id].root.name})"
            )
            continue
        datasets[dataset.id] = dataset
    return datasets, problems


class DatasetRegistry:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.datasets: dict[str, Dataset] = {}
        self.problems: dict[str, str] = {}
        #: Measured sizes: id -> (bytes, when). A walk of every chunk file is too costly for each
        #: scan, so sizes are measured again only after ``max_age`` (or when the dataset changed).
        self.sizes: dict[str, tuple[int, float]] = {}

    def size_of(self, dataset_id: str) -> int | None:
        measured = self.sizes.get(dataset_id)
        return measured[0] if measured else None

    def measure_sizes(self, max_age: float, now: float) -> list[str]:
        """Measure the datasets whose size is unknown or older than ``max_age``; their ids."""
        measured = []
        for dataset_id, dataset in list(self.datasets.items()):
            known = self.sizes.get(dataset_id)
            if known is None or now - known[1] >= max_age:
                try:
                    self.sizes[dataset_id] = (folder_size(dataset.root), now)
                except OSError:
                    continue
                measured.append(dataset_id)
        return measured

    def refresh(self) -> tuple[set[str], set[str]]:
        """Rescan; return (added or changed ids, removed ids)."""
        datasets, problems = scan_data_dir(self.data_dir)
        changed = {i for i, d in datasets.items() if i not in self.datasets or self.datasets[i] != d}
        removed = set(self.datasets) - set(datasets)
        self.datasets, self.problems = datasets, problems
        for dataset_id in changed | removed:
            self.sizes.pop(dataset_id, None)
        return changed, removed
