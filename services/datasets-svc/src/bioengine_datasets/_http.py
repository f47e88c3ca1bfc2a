"""The HTTP side of bioengine-datasets (aiohttp): dataset bytes with Range, listings, health.

Tokens come from ``Authorization: Bearer`` (``?token=`` accepted for clients that cannot set
headers). The access log writes method, path and status only: never a query string, never a
header, so a token cannot reach a log.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from bioengine_common import InvalidRequest, NotFound, PermissionDenied

from ._access import TokenValidator, may_read
from ._paths import resolve_inside
from ._ranges import RangeNotSatisfiable, parse_range
from ._registry import Dataset, DatasetRegistry

__all__ = ["build_app"]

REGISTRY = web.AppKey("registry", DatasetRegistry)
VALIDATOR = web.AppKey("validator", TokenValidator)
ADMINS: web.AppKey[list[str]] = web.AppKey("admins")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "Authorization, Range, Content-Type",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Expose-Headers": "Content-Range, Content-Length, ETag, Accept-Ranges",
}


class PathOnlyAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.1fms", request.method, request.path, response.status, time * 1000)


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.query.get("token") or None


@web.middleware
async def _errors_and_cors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.method == "OPTIONS":
        return web.Response(status=204, headers=CORS_HEADERS)
    try:
        response = await handler(request)
    except PermissionDenied as exc:
        status = 401 if request.get("user") is None else 403
        response = web.json_response({"error": str(exc)}, status=status)
    except NotFound as exc:
        response = web.json_response({"error": str(exc)}, status=404)
    except InvalidRequest as exc:
        response = web.json_response({"error": str(exc)}, status=400)
    except RangeNotSatisfiable as exc:
        size = request.get("size", 0)
        response = web.json_response(
            {"error": str(exc)}, status=416, headers={"Content-Range": f"bytes */{size}"}
        )
    response.headers.update(CORS_HEADERS)
    return response


async def _user(request: web.Request) -> dict[str, Any] | None:
    token = _token(request)
    if token is None:
        return None
    user = await request.app[VALIDATOR].user(token)
    if user is None:
        raise PermissionDenied("the token was rejected by the Hypha server (invalid or expired)")
    request["user"] = user
    return user


async def _readable(request: web.Request, dataset_id: str) -> Dataset:
    user = await _user(request)
    dataset = request.app[REGISTRY].datasets.get(dataset_id)
    admins: list[str] = request.app[ADMINS]
    if dataset is not None and may_read(user, dataset, admins):
        return dataset
    if user is None:  # the same answer whether it exists or not: no existence leak
        raise PermissionDenied(f"dataset '{dataset_id}' needs a token with read access")
    if dataset is None:
        raise NotFound(f"dataset '{dataset_id}' not found")
    raise PermissionDenied(
        f"user '{user.get('email') or user.get('id')}' may not read dataset '{dataset_id}'"
    )


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "datasets": len(request.app[REGISTRY].datasets)})


async def list_datasets(request: web.Request) -> web.Response:
    user = await _user(request)
    registry, admins = request.app[REGISTRY], request.app[ADMINS]
    return web.json_response({i: d.info() for i, d in registry.datasets.items() if may_read(user, d, admins)})


async def dataset_info(request: web.Request) -> web.Response:
    return web.json_response((await _readable(request, request.match_info["dataset"])).info())


def list_tree(root: Path, directory: Path) -> list[str]:
    """Files below ``directory`` as paths relative to it; symlinks that leave ``root`` are skipped."""
    files = []
    real_root = root.resolve()
    for current, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(current) / name
            if real_root in path.resolve().parents:
                files.append(str(path.relative_to(directory)))
    return sorted(files)


def _read(path: Path, start: int, length: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read(length)


def _locate(root: Path, relative: str) -> tuple[Path, os.stat_result | None]:
    """The confined path and its stat (None for a directory). File-system calls, so run in a
    thread: on a shared HPC file system a stat can take milliseconds."""
    target = resolve_inside(root, relative) if relative else root.resolve()
    return target, None if target.is_dir() else target.stat()


async def data(request: web.Request) -> web.StreamResponse:
    dataset = await _readable(request, request.match_info["dataset"])
    relative = request.match_info.get("path", "")
    target, stat = await asyncio.to_thread(_locate, dataset.root, relative)
    if stat is None:
        if "list" not in request.query:
            raise NotFound(f"'{relative or '/'}' is a directory (add ?list=1 for its files)")
        files = await asyncio.to_thread(list_tree, dataset.root, target)
        return web.json_response({"files": files})
    cache_control = "private, max-age=60"
    if "Range" not in request.headers:
        # A whole chunk file: sendfile, no copy through Python (aiohttp also answers HEAD and
        # If-None-Match / If-Modified-Since here, with its own ETag).
        return web.FileResponse(target, headers={"Cache-Control": cache_control, "Accept-Ranges": "bytes"})
    size = stat.st_size
    request["size"] = size
    etag = f'"{size:x}-{stat.st_mtime_ns:x}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": cache_control}
    headers["Content-Type"] = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    span = parse_range(request.headers.get("Range"), size)
    start, end = span if span else (0, size - 1)
    length = max(0, end - start + 1)
    if span:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD":
        headers["Content-Length"] = str(length)
        return web.Response(status=206 if span else 200, headers=headers)
    body = await asyncio.to_thread(_read, target, start, length)
    return web.Response(status=206 if span else 200, body=body, headers=headers)


def build_app(registry: DatasetRegistry, validator: TokenValidator, admins: list[str]) -> web.Application:
    app = web.Application(middlewares=[_errors_and_cors])
    app[REGISTRY], app[VALIDATOR], app[ADMINS] = registry, validator, admins
    app.router.add_get("/health", health)
    app.router.add_get("/datasets", list_datasets)
    app.router.add_get("/datasets/{dataset}", dataset_info)
    app.router.add_get("/data/{dataset}", data)
    app.router.add_get("/data/{dataset}/{path:.*}", data)
    app.router.add_route("OPTIONS", "/{tail:.*}", health)
    return app
