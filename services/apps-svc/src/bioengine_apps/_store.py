"""apps-svc's own state on disk: what a lost Ray head must not take with it.

Under ``<workspace-dir>/apps-state/`` (mode 0700):

- ``records/<application_id>.json``: the app's :class:`~._state.AppRecord` (desired state and
  metadata, no secret values);
- ``secrets/<application_id>.json`` (mode 0600): its secret env values, the ``hypha_token``
  given at deploy and the token of its Hypha service;
- ``cluster.json``: the Ray cluster apps-svc last deployed to (its session), so a new head is
  recognised after a restart;
- ``stopped.json``: ids of apps stopped through apps-svc, and when, so stopping one again is
  answered "already stopped" instead of "unknown app".

Every file is written to a temporary file in the same folder, flushed and renamed over the old
one, so a crash leaves either the old or the new content, never a torn file. Ray's GCS
key-value store keeps a copy of the secrets for the replicas to read (they cannot read this
folder on another node); apps-svc writes it again after a head restart.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

from bioengine_common import write_json_atomic

from ._state import AppRecord

__all__ = ["StateStore"]

_SAFE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class StateStore:
    """Blocking file operations; the service calls them in threads."""

    def __init__(self, root: Path):
        self.root = root

    def _dir(self, name: str) -> Path:
        folder = self.root / name
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            self.root.chmod(0o700)
        return folder

    def _path(self, kind: str, application_id: str) -> Path:
        if not _SAFE_ID.match(application_id):
            raise ValueError(f"'{application_id}' is not an application id")
        return self._dir(kind) / f"{application_id}.json"

    # ---- records --------------------------------------------------------------------------------
    def load_records(self) -> tuple[dict[str, AppRecord], list[str]]:
        """Every stored record, and the problems with files that could not be read (named)."""
        records: dict[str, AppRecord] = {}
        problems: list[str] = []
        for path in sorted(self._dir("records").glob("*.json")):
            try:
                record = AppRecord.model_validate(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                problems.append(f"{path}: {exc}")
                continue
            records[record.application_id] = record
        return records, problems

    def save_record(self, record: AppRecord) -> None:
        write_json_atomic(self._path("records", record.application_id), record.model_dump(mode="json"), 0o600)

    # ---- secrets --------------------------------------------------------------------------------
    def load_secrets(self, application_id: str) -> dict[str, Any] | None:
        value = _read(self._path("secrets", application_id))
        return dict(value) if isinstance(value, dict) else None

    def save_secrets(self, application_id: str, value: dict[str, Any]) -> None:
        write_json_atomic(self._path("secrets", application_id), value, 0o600)

    def delete(self, application_id: str) -> None:
        for kind in ("records", "secrets"):
            with contextlib.suppress(FileNotFoundError):
                self._path(kind, application_id).unlink()

    # ---- the cluster last deployed to -----------------------------------------------------------
    def load_cluster(self) -> dict[str, Any]:
        value = _read(self.root / "cluster.json")
        return dict(value) if isinstance(value, dict) else {}

    def save_cluster(self, value: dict[str, Any]) -> None:
        self._dir(".")
        write_json_atomic(self.root / "cluster.json", value, 0o600)

    # ---- apps stopped through apps-svc ----------------------------------------------------------
    def load_stopped(self) -> dict[str, float]:
        value = _read(self.root / "stopped.json")
        if not isinstance(value, dict):
            return {}
        return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)}

    def save_stopped(self, value: dict[str, float]) -> None:
        self._dir(".")
        write_json_atomic(self.root / "stopped.json", value, 0o600)
