"""App artifacts in Hypha's artifact manager: collection ``applications`` of the worker's workspace.

Versioning follows the public worker (the rules are ``bioengine_app_format.version_action``):
current format: a manifest ``version`` not stored yet makes a new snapshot and keeps the old
ones; the latest version again updates in place; an older one is refused. Format 0.6.0: every
upload needs a new, strictly higher PEP 440 ``version``. Files go to presigned URLs; a failed upload discards the staged changes, so a broken
upload never replaces a working app.

Frontends: an app whose manifest names a ``frontend_entry`` (either format) gets the artifact's
``view_config`` set at upload, and Hypha serves the entry's folder statically at
``<public base URL>/<workspace>/view/<alias>/`` (:func:`view_config_for`, :func:`static_site_url`).

Public apps: Hypha lets a caller read an artifact's files only when the artifact's collection
lets them too, and a collection that lets anyone read lets anyone read all its children. So an
app uploaded with ``public=True`` goes into a second collection, ``applications-public``, that
anyone may read (its files and its frontend page); the others stay in ``applications``, readable
by the workspace only. An app's collection is chosen when it is first uploaded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp

from bioengine_app_format import format_version_of, load_app_manifest, version_action
from bioengine_common import InvalidRequest, NotFound, error_summary

__all__ = [
    "COLLECTION",
    "PUBLIC_COLLECTION",
    "ArtifactStore",
    "dev_version_problem",
    "static_site_url",
    "view_config_for",
]

COLLECTION = "applications"
_TIMEOUT = aiohttp.ClientTimeout(total=60)


#: The collection of the apps uploaded with ``public=True``: anyone may read them.
PUBLIC_COLLECTION = "applications-public"


def view_config_for(frontend_entry: str | None) -> dict[str, Any] | None:
    """The artifact ``view_config`` that makes Hypha serve an app's frontend: the entry's folder
    is the site's root and the entry its index page (None: the app has no frontend)."""
    if not frontend_entry:
        return None
    folder, _, index = frontend_entry.strip("/").rpartition("/")
    return {"branch": "main", "root_directory": folder or "/", "index": index, "headers": {}}


def static_site_url(
    public_base_url: str,
    workspace: str,
    alias: str,
    view_config: Any,
    query: dict[str, str | None] | None = None,
) -> str | None:
    """Where Hypha serves an app's frontend (None without a ``view_config``): the index page of
    the site's root, with ``query`` (the app's server and service ids, the ones set) appended."""
    if not isinstance(view_config, dict):
        return None
    index = str(view_config.get("index") or "index.html")
    # Hypha serves "index.html" for the bare folder; any other entry page is named in the URL.
    url = f"{public_base_url.rstrip('/')}/{workspace}/view/{alias}/" + (
        "" if index == "index.html" else index
    )
    params = {k: v for k, v in (query or {}).items() if v}
    return f"{url}?{urlencode(params)}" if params else url


def dev_version_problem(version: str) -> str | None:
    """Why a version may not be deleted on its own (only development versions may: their tag
    contains 'dev'), or None."""
    if "dev" not in str(version):
        return (
            f"only development versions (a tag containing 'dev', e.g. '1.2.0.dev1') can be deleted "
            f"one by one; '{version}' is a release: delete the whole app with delete_app"
        )
    return None


def _is_not_found(exc: BaseException) -> bool:
    text = str(exc)
    return "does not exist" in text or "not found" in text.lower() or "KeyError" in text


def _upload_config(existing: Mapping[str, Any] | None, frontend_entry: str | None) -> dict[str, Any]:
    """The artifact config an upload writes: the existing one with the frontend's view_config
    set (or dropped)."""
    config = dict((existing or {}).get("config") or {})
    view = view_config_for(frontend_entry)
    if view is None:
        config.pop("view_config", None)
    else:
        config["view_config"] = view
    return config


#: Artifact versions whose files ``ArtifactStore.fetch`` keeps in memory, and the largest kept.
FILES_CACHE_ENTRIES = 16
FILES_CACHE_BYTES = 16 * 1024**2
#: Seconds an artifact must have been unchanged for its files to be kept: ``last_modified``
#: counts whole seconds, so a change within the same second (by another apps-svc replica, say)
#: would otherwise leave the key as it was.
FILES_CACHE_SETTLED_S = 5.0


def _files_key(record: Mapping[str, Any], version: str | None) -> str | None:
    """What identifies an artifact version's files besides the artifact's id: the version asked
    for, the record's ``last_modified`` and its versions (an upload or a deletion by anyone
    changes them; ``last_modified`` counts seconds, so files are kept only once the artifact
    has been unchanged for :data:`FILES_CACHE_SETTLED_S`, and ``ArtifactStore`` forgets an
    artifact's files whenever it changes that artifact itself). None: not cacheable."""
    if not record.get("id") or record.get("last_modified") is None:
        return None
    stamp = [version, record["last_modified"], record.get("versions") or []]
    return json.dumps(stamp, sort_keys=True, default=str)


class ArtifactStore:
    def __init__(self, server: Any, workspace: str):
        self.server = server
        self.workspace = workspace
        self._manager: Any = None
        #: Files of recently fetched artifact versions, by (artifact id, :func:`_files_key`),
        #: newest last; an artifact's are dropped whenever this store changes it.
        self._files: OrderedDict[tuple[str, str], dict[str, bytes]] = OrderedDict()
        # A restarted Hypha server registers its artifact manager under a new client id, so a
        # proxy kept from before would time out on every call: forget it when hypha-rpc
        # reports a new workspace manager (after each reconnect to a restarted server).
        rpc = getattr(server, "rpc", None)
        if rpc is not None and callable(getattr(rpc, "on", None)):
            rpc.on("manager_refreshed", self._forget_manager)

    def _forget_manager(self, _event: Any = None) -> None:
        self._manager = None

    def _forget_files(self, artifact_id: str) -> None:
        for key in [key for key in self._files if key[0] == artifact_id]:
            del self._files[key]

    @property
    def collection_id(self) -> str:
        return f"{self.workspace}/{COLLECTION}"

    @property
    def public_collection_id(self) -> str:
        return f"{self.workspace}/{PUBLIC_COLLECTION}"

    def full_id(self, artifact_id: str) -> str:
        if not artifact_id or not isinstance(artifact_id, str):
            raise InvalidRequest("artifact_id must be a non-empty string")
        return artifact_id if "/" in artifact_id else f"{self.workspace}/{artifact_id}"

    async def manager(self) -> Any:
        if self._manager is None:
            try:
                self._manager = await self.server.get_service("public/artifact-manager")
            except Exception as exc:
                raise InvalidRequest(
                    "this Hypha server has no artifact manager (it needs S3 storage): " + error_summary(exc)
                ) from exc
        return self._manager

    async def ensure_collection(self, public: bool = False) -> None:
        """Create the apps collection (or the public one) unless it exists."""
        manager = await self.manager()
        collection_id = self.public_collection_id if public else self.collection_id
        try:
            await manager.read(collection_id)
        except Exception as exc:
            if not _is_not_found(exc):
                raise
            extra: dict[str, Any] = {"config": {"permissions": {"*": "r"}}} if public else {}
            try:
                await manager.create(
                    type="collection",
                    alias=PUBLIC_COLLECTION if public else COLLECTION,
                    workspace=self.workspace,
                    manifest={
                        "name": "Public applications" if public else "Applications",
                        "description": "BioEngine apps of this workspace"
                        + (" that anyone may read" if public else ""),
                    },
                    **extra,
                )
            except Exception as create_error:  # created meanwhile by another replica
                if "already exists" not in str(create_error):
                    raise

    async def _read(self, artifact_id: str, version: str | None = None) -> dict[str, Any] | None:
        manager = await self.manager()
        try:
            kwargs = {"version": version} if version else {}
            return dict(await manager.read(artifact_id, **kwargs))
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise

    async def probe(self) -> None:
        """A cheap call that needs the S3 store: list the collection's files (creating the
        collection first if it is missing). Raises what the artifact manager raises."""
        await self.ensure_collection()
        manager = await self.manager()
        await manager.list_files(self.collection_id)

    # ---- upload -----------------------------------------------------------------------------------
    async def _put_all(self, artifact_id: str, files: Mapping[str, bytes]) -> None:
        """Upload the files into the artifact's staged version.

        One ``put_file`` call asks for every upload URL: the artifact manager records each
        staged file by rewriting the artifact's staging record, so concurrent calls for one
        artifact race (a lost file entry, or "database is locked" on an SQLite-backed server).
        The bytes then go up in parallel."""
        manager = await self.manager()
        urls = await manager.put_file(artifact_id, file_path=list(files))
        missing = sorted(set(files) - set(urls))
        if missing:
            raise RuntimeError(f"the artifact manager gave no upload URL for {missing}")

        async def put(session: aiohttp.ClientSession, name: str) -> None:
            async with session.put(urls[name], data=files[name]) as response:
                if response.status >= 300:
                    raise RuntimeError(
                        f"uploading '{name}' failed: HTTP {response.status} {await response.text()}"
                    )

        async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
            await asyncio.gather(*(put(session, name) for name in files))

    async def _staged_files(self, artifact_id: str, dir_path: str = "") -> list[str]:
        manager = await self.manager()
        names: list[str] = []
        kwargs: dict[str, Any] = {"stage": True}
        if dir_path:
            kwargs["dir_path"] = dir_path
        for entry in await manager.list_files(artifact_id, **kwargs):
            path = f"{dir_path}/{entry['name']}" if dir_path else entry["name"]
            if entry.get("type") == "directory":
                names += await self._staged_files(artifact_id, path)
            else:
                names.append(path)
        return names

    async def upload(self, files: Mapping[str, bytes], created_by: str | None, public: bool = False) -> str:
        """Store an app (files incl. manifest.yaml); return its artifact id ``workspace/alias``.

        The artifact's ``view_config`` follows the manifest's ``frontend_entry`` (set, changed or
        removed with each upload). ``public`` puts a new app into the collection anyone may
        read (its files and its frontend page); an app keeps the collection it was first
        uploaded to (asking a private one to become public is an InvalidRequest)."""
        try:
            app = load_app_manifest(files)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        manifest = dict(app.manifest)
        manifest["created_by"] = created_by
        manager = await self.manager()
        artifact_id = f"{self.workspace}/{app.id}"
        self._forget_files(artifact_id)
        version = app.version
        existing = await self._read(artifact_id)
        parents = (self.collection_id, self.public_collection_id)
        if existing is not None and existing.get("parent_id") not in parents:
            await manager.delete(artifact_id, delete_files=True)
            existing = None
        if existing is not None and public and existing.get("parent_id") != self.public_collection_id:
            raise InvalidRequest(
                f"app '{artifact_id}' was uploaded without public=True and stays private; to make it "
                "public, delete it (delete_app) and upload it again with public=True"
            )
        parent_id = (existing or {}).get("parent_id") or (
            self.public_collection_id if public else self.collection_id
        )
        await self.ensure_collection(public=parent_id == self.public_collection_id)
        tag: str | None = version
        config = _upload_config(existing, app.frontend_entry)
        if existing is None:
            await manager.create(
                parent_id=parent_id, alias=app.id, type="application",
                manifest=manifest, config=config, stage=True,
            )  # fmt: skip
        else:
            tags = [str(v.get("version")) for v in existing.get("versions") or [] if v.get("version")]
            try:
                action = version_action(app, tags, artifact_id)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from exc
            if action == "in_place":
                tag = None  # update the latest version in place
                await manager.edit(artifact_id, manifest=manifest, config=config, stage=True)
            else:
                await manager.edit(artifact_id, manifest=manifest, config=config, stage=True, version="new")
        try:
            await self._put_all(artifact_id, files)
            for name in await self._staged_files(artifact_id):
                if name not in files:
                    await manager.remove_file(artifact_id, file_path=name)
            if tag:
                await manager.commit(artifact_id, version=tag)
            else:
                await manager.commit(artifact_id)
            self._forget_files(artifact_id)
        except BaseException:
            try:
                await manager.discard(artifact_id)
            except Exception:  # a brand-new artifact has nothing to fall back to
                await manager.delete(artifact_id, delete_files=True)
            raise
        return artifact_id

    # ---- read -------------------------------------------------------------------------------------
    async def view_config(self, artifact_id: str) -> Any:
        """The artifact's ``view_config`` (None: no frontend, or no such artifact)."""
        record = await self._read(self.full_id(artifact_id))
        return ((record or {}).get("config") or {}).get("view_config")

    async def list_apps(self) -> dict[str, Any]:
        manager = await self.manager()
        apps: dict[str, Any] = {}
        for collection_id in (self.collection_id, self.public_collection_id):
            try:
                children = await manager.list(collection_id)
            except Exception as exc:
                if _is_not_found(exc):
                    continue
                raise
            for child in children:
                artifact_id = child["id"]
                apps[artifact_id] = {
                    "manifest": child.get("manifest"),
                    "format_version": format_version_of(child.get("manifest")),
                    "versions": [v.get("version") for v in child.get("versions") or []],
                    "files": await self.file_names(artifact_id),
                    "public": collection_id == self.public_collection_id,
                }
        return apps

    async def file_names(self, artifact_id: str, version: str | None = None, dir_path: str = "") -> list[str]:
        manager = await self.manager()
        kwargs: dict[str, Any] = {}
        if version:
            kwargs["version"] = version
        if dir_path:
            kwargs["dir_path"] = dir_path
        names: list[str] = []
        for entry in await manager.list_files(artifact_id, **kwargs):
            path = f"{dir_path}/{entry['name']}" if dir_path else entry["name"]
            if entry.get("type") == "directory":
                names += await self.file_names(artifact_id, version, path)
            else:
                names.append(path)
        return names

    async def get(self, artifact_id: str, version: str | None = None) -> dict[str, Any]:
        artifact_id = self.full_id(artifact_id)
        record = await self._read(artifact_id, version)
        if record is None:
            what = f"version {version} of " if version else ""
            raise NotFound(f"no app artifact {what}'{artifact_id}'")
        return record

    async def fetch(
        self, artifact_id: str, version: str | None = None
    ) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The artifact's record and all its files at ``version`` (default: latest)."""
        record = await self.get(artifact_id, version)
        full = record["id"]
        stamp = _files_key(record, version)
        key = (full, stamp or "")
        if stamp is not None and key in self._files:
            self._files.move_to_end(key)
            return record, dict(self._files[key])
        manager = await self.manager()
        names = await self.file_names(full, version)
        files: dict[str, bytes] = {}
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:

            async def download(name: str) -> None:
                kwargs = {"version": version} if version else {}
                url = await manager.get_file(full, file_path=name, **kwargs)
                async with session.get(url) as response:
                    if response.status != 200:
                        raise RuntimeError(f"downloading '{name}' of {full} failed: HTTP {response.status}")
                    files[name] = await response.read()

            await asyncio.gather(*(download(name) for name in names))
        settled = time.time() - float(record["last_modified"] or 0) >= FILES_CACHE_SETTLED_S
        if stamp is not None and settled and sum(map(len, files.values())) <= FILES_CACHE_BYTES:
            self._files[key] = dict(files)
            while len(self._files) > FILES_CACHE_ENTRIES:
                self._files.popitem(last=False)
        return record, files

    async def delete_version(self, artifact_id: str, version: str) -> str:
        """Delete one development version of an app (see :func:`dev_version_problem`); the
        artifact's full id. The caller checks that no app runs that version."""
        full = self.full_id(artifact_id)
        if not full.startswith(f"{self.workspace}/"):
            raise InvalidRequest(f"'{full}' is not in this worker's workspace '{self.workspace}'")
        problem = dev_version_problem(version)
        if problem:
            raise InvalidRequest(problem)
        record = await self.get(full)
        tags = [str(v.get("version")) for v in record.get("versions") or []]
        if version not in tags:
            raise NotFound(f"app '{full}' has no version '{version}' (versions: {', '.join(tags) or 'none'})")
        if len(tags) == 1:
            raise InvalidRequest(
                f"'{version}' is the only version of '{full}'; delete the whole app with delete_app"
            )
        manager = await self.manager()
        await manager.delete(full, version=version, delete_files=True)
        self._forget_files(full)
        return full

    async def delete(self, artifact_id: str) -> None:
        full = self.full_id(artifact_id)
        if not full.startswith(f"{self.workspace}/"):
            raise InvalidRequest(f"'{full}' is not in this worker's workspace '{self.workspace}'")
        await self.get(full)
        manager = await self.manager()
        await manager.delete(full, delete_files=True, recursive=True)
        self._forget_files(full)
