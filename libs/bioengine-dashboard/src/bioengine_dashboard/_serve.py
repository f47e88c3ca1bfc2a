"""Serving the built page: one Hypha HTTP service of ``type: "functions"``.

Hypha routes ``{server_url}/{workspace}/apps/{service_id}/{path}`` to the service: ``index``
answers the bare folder, ``default`` every other path (``scope["function_path"]``). Each
answer is ``{status, headers, body}``. Only files under :data:`STATIC_DIR` are served, plus
``config.json``: what the page needs to find the worker (its workspace and service id). No
token or user data ever passes through here: the page talks to the worker over Hypha RPC.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DASHBOARD_SERVICE_ID",
    "SOURCE_FILES",
    "STATIC_DIR",
    "dashboard_service",
    "dashboard_url",
    "respond",
    "source_digest",
]

#: The Hypha service id of the page (its URL path: ``/{workspace}/apps/bioengine-dashboard/``).
DASHBOARD_SERVICE_ID = "bioengine-dashboard"

#: The built page (``npm run build`` in ``web/`` writes it; committed, so no Node.js is needed).
STATIC_DIR = Path(__file__).resolve().parent / "static"

#: What the build is made from, relative to ``web/``: files, and folders taken whole.
#: ``static/build-info.json`` records :func:`source_digest` of them at build time.
SOURCE_FILES = ("package.json", "package-lock.json", "build.mjs", "index.html", "src")

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".map": "application/json",
}

#: The page loads its own files only and talks to its own Hypha server (websocket).
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def dashboard_url(server_url: str, workspace: str) -> str:
    """Where Hypha serves the page of the worker in ``workspace``."""
    base = server_url.rstrip("/")
    if base.startswith("ws"):
        base = "http" + base[2:]
    return f"{base}/{workspace}/apps/{DASHBOARD_SERVICE_ID}/"


def _files(root: Path, names: Iterable[str]) -> list[Path]:
    found: list[Path] = []
    for name in names:
        path = root / name
        if path.is_dir():
            found.extend(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def source_digest(web_dir: Path) -> str:
    """SHA-256 over the page's sources (:data:`SOURCE_FILES`), as ``web/build.mjs`` computes it:
    for each file in order of its relative path, ``"<path>\\n<size>\\n"`` then its bytes."""
    digest = hashlib.sha256()
    for path in _files(web_dir, SOURCE_FILES):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(web_dir).as_posix()}\n{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


def _answer(status: int, body: bytes, content_type: str) -> dict[str, Any]:
    return {"status": status, "headers": {"Content-Type": content_type, **_SECURITY_HEADERS}, "body": body}


def respond(
    path: str, config: Mapping[str, Any], method: str = "GET", static_dir: Path = STATIC_DIR
) -> dict[str, Any]:
    """The answer to ``method`` on ``path`` (relative to the page's folder): a file of
    ``static_dir``, ``config.json`` (``config``), or 404/405 with a one-line reason."""
    if method.upper() not in ("GET", "HEAD"):
        return _answer(405, f"{method} is not allowed: the dashboard is read-only\n".encode(), "text/plain")
    relative = path.strip("/") or "index.html"
    if relative == "config.json":
        return _answer(200, json.dumps(dict(config)).encode(), "application/json")
    root = static_dir.resolve()
    target = (root / relative).resolve()
    parts = Path(relative).parts
    if root not in target.parents or any(part.startswith(".") for part in parts) or not target.is_file():
        return _answer(404, f"no such file in the dashboard: {relative[:200]}\n".encode(), "text/plain")
    content_type = (
        _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    )
    return _answer(200, target.read_bytes(), content_type)


def dashboard_service(
    config: Mapping[str, Any] | Callable[[], Mapping[str, Any]], static_dir: Path = STATIC_DIR
) -> dict[str, Any]:
    """The service to register with ``register_service``: public, served by Hypha over HTTP.

    ``config`` (or a function returning it, asked on each request) is served as
    ``config.json``: the page reads ``worker_service_id`` and ``workspace`` from it.
    """

    def current() -> Mapping[str, Any]:
        return config() if callable(config) else config

    def handler(index: bool) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def serve(scope: dict[str, Any]) -> dict[str, Any]:
            path = "" if index else str(scope.get("function_path") or scope.get("path") or "")
            return respond(path, current(), str(scope.get("method") or "GET"), static_dir)

        return serve

    return {
        "id": DASHBOARD_SERVICE_ID,
        "name": "BioEngine dashboard",
        "description": "The worker's dashboard page (static files; it reads the public bioengine-worker API "
        "with the viewer's own token).",
        "type": "functions",
        "config": {"visibility": "public", "require_context": False},
        "index": handler(index=True),
        "default": handler(index=False),
    }
