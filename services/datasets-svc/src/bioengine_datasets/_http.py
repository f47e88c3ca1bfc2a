"""The HTTP side of bioengine-datasets (aiohttp): dataset bytes with Range, listings, health.

Tokens come from ``Authorization: Bearer`` (``?token=`` accepted for clients that cannot set
headers). The access log writes method, path and status only: never a query string, never a
header, so a token cannot reach a log. It goes to the service's logger (``create_logger``),
whose formatter escapes control characters, so a path like ``/data/x/a%0d%0a...`` cannot
start a forged line; the server's own error log goes to the same logger.

A dataset that does not exist and one the caller may not read get the same answer
(``DatasetUnreadable``): 401 for an anonymous caller, 403 for a signed-in one, and the same
JSON body apart from the id the caller gave, so private ids cannot be discovered. A token the
Hypha server rejects gets its own 401, decided before any dataset is looked up.
"""

from __future__ import annotations

import asyncio
import errno
import mimetypes
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from bioengine_common import InvalidRequest, NotFound, PermissionDenied
from bioengine_common.metrics import counter
from bioengine_datasets_client.batch import (
    BATCH_MAX_BYTES,
    BATCH_TYPE,
    data_entry,
    error_entry,
    frame_head,
    parse_batch_request,
)

from ._access import DatasetUnreadable, TokenValidator, may_read, readable_dataset
from ._paths import DatasetPaths
from ._ranges import RangeNotSatisfiable, parse_range
from ._registry import Dataset, DatasetRegistry

__all__ = ["build_app"]

REGISTRY = web.AppKey("registry", DatasetRegistry)
VALIDATOR = web.AppKey("validator", TokenValidator)
ADMINS: web.AppKey[list[str]] = web.AppKey("admins")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "Authorization, Range, Content-Type",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, OPTIONS",
    "Access-Control-Expose-Headers": "Content-Range, Content-Length, ETag, Accept-Ranges",
}


class PathOnlyAccessLogger(AbstractAccessLogger):
    """Method, decoded path, status and time, through the service's logger (which escapes)."""

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
    except TokenRejected as exc:
        response = web.json_response({"error": str(exc)}, status=401, headers=_CHALLENGE_INVALID)
    except DatasetUnreadable as exc:
        if exc.anonymous:
            response = web.json_response({"error": str(exc)}, status=401, headers=_CHALLENGE)
        else:
            response = web.json_response({"error": str(exc)}, status=403)
    except PermissionDenied as exc:
        response = web.json_response({"error": str(exc)}, status=403)
    except NotFound as exc:
        response = web.json_response({"error": str(exc)}, status=404)
    except InvalidRequest as exc:
        response = web.json_response({"error": str(exc)}, status=400)
    except _TooLarge as exc:
        response = web.json_response({"error": str(exc)}, status=413)
    except _Busy as exc:
        response = web.json_response({"error": str(exc)}, status=503, headers={"Retry-After": "1"})
    except RangeNotSatisfiable as exc:
        response = web.json_response(
            {"error": str(exc)}, status=416, headers={"Content-Range": f"bytes */{exc.size}"}
        )
    response.headers.update(CORS_HEADERS)
    return response


#: Requests answered, by HTTP status code, and the dataset bytes sent (GET/POST under /data/
#: answered 200 or 206). No dataset id or path is a label: the scrape endpoint has no token.
HTTP_REQUESTS = counter(
    "bioengine_dataset_http_requests",
    "Requests answered by the datasets HTTP server, by status code.",
    ["status"],
)
DATASET_BYTES = counter(
    "bioengine_dataset_bytes_sent",
    "Bytes of dataset files sent by the datasets HTTP server (full and range reads, batches).",
)


@web.middleware
async def _metered(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        HTTP_REQUESTS.labels(str(exc.status)).inc()
        raise
    except Exception:
        HTTP_REQUESTS.labels("500").inc()
        raise
    HTTP_REQUESTS.labels(str(response.status)).inc()
    if response.status in (200, 206) and request.method != "HEAD" and request.path.startswith("/data/"):
        DATASET_BYTES.inc(response.content_length or 0)
    return response


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="bioengine-datasets"'}
_CHALLENGE_INVALID = {"WWW-Authenticate": 'Bearer realm="bioengine-datasets", error="invalid_token"'}


class TokenRejected(PermissionDenied):
    """The Hypha server rejected the token: 401, whatever the request asked for."""


async def _user(request: web.Request) -> dict[str, Any] | None:
    token = _token(request)
    if token is None:
        return None
    user = await request.app[VALIDATOR].user(token)
    if user is None:
        raise TokenRejected("the token was rejected by the Hypha server (invalid or expired)")
    return user


async def _readable(request: web.Request, dataset_id: str) -> Dataset:
    user = await _user(request)  # a rejected token is refused here, before any lookup
    admins: list[str] = request.app[ADMINS]
    return readable_dataset(request.app[REGISTRY].datasets, dataset_id, user, admins)


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


LARGE_FILE = 16 << 20  # a whole file above this goes out with sendfile, not through memory


class _TooLarge(Exception):
    """A batch answer would exceed BATCH_MAX_BYTES: answer 413, the client asks key by key."""


class _Busy(Exception):
    """Out of file descriptors for now: answer 503, which clients retry."""


@dataclass
class _Reply:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    sendfile: Path | None = None  # a large whole file, streamed from disk instead of ``body``


def _file_reply(
    paths: DatasetPaths,
    relative: str,
    range_header: str | None,
    *,
    if_none_match: str | None = None,
    head: bool = False,
) -> _Reply:
    """Everything one file request needs from the file system, in one call (run it in a thread:
    on a shared HPC file system each call can take milliseconds, and one thread hop per request
    is the cheapest). Raises NotFound, PermissionDenied or RangeNotSatisfiable."""
    target = paths.resolve(relative)
    try:
        with open(target, "rb") as handle:
            stat = os.fstat(handle.fileno())
            size = stat.st_size
            etag = f'"{stat.st_mtime_ns:x}-{size:x}"'
            if if_none_match == etag:
                return _Reply(304, _headers(target, etag))
            span = parse_range(range_header, size)
            start, end = span if span else (0, size - 1)
            length = max(0, end - start + 1)
            status = 206 if span else 200
            headers = _headers(target, etag)
            if span:
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            if head:
                headers["Content-Length"] = str(length)
                return _Reply(status, headers)
            if span is None and length > LARGE_FILE:
                return _Reply(status, headers, sendfile=Path(target))
            handle.seek(start)
            return _Reply(status, headers, handle.read(length))
    except IsADirectoryError:
        raise NotFound(f"'{relative or '/'}' is a directory (add ?list=1 for its files)") from None
    except PermissionError:
        raise PermissionDenied(f"'{relative}' is not readable by the dataset server") from None


def _headers(target: str, etag: str) -> dict[str, str]:
    return {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=60",
        "Content-Type": mimetypes.guess_type(target)[0] or "application/octet-stream",
    }


def _listing(root: Path, relative: str) -> list[str]:
    target = Path(DatasetPaths(root).resolve(relative))
    if not target.is_dir():
        raise InvalidRequest(f"'{relative}' is a file, not a directory: nothing to list")
    return list_tree(root, target)


async def data(request: web.Request) -> web.StreamResponse:
    dataset = await _readable(request, request.match_info["dataset"])
    relative = request.match_info.get("path", "")
    if "list" in request.query:
        return web.json_response({"files": await asyncio.to_thread(_listing, dataset.root, relative)})
    reply = await asyncio.to_thread(
        _file_reply, DatasetPaths(dataset.root), relative, request.headers.get("Range"),
        if_none_match=request.headers.get("If-None-Match"), head=request.method == "HEAD",
    )  # fmt: skip
    if reply.sendfile is not None:
        return web.FileResponse(reply.sendfile, headers=reply.headers)
    return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


def _batch_items(payload: Any) -> list[tuple[str, str | None]]:
    try:
        return parse_batch_request(payload)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


@dataclass
class _Slice:
    handle: BinaryIO
    offset: int
    count: int


def _open_slice(paths: DatasetPaths, relative: str, range_header: str | None) -> tuple[int, _Slice]:
    target = paths.resolve(relative)
    try:
        handle = open(target, "rb")  # noqa: SIM115 - closed by the caller once sent
    except IsADirectoryError:
        raise NotFound(f"'{relative}' is a directory") from None
    except PermissionError:
        raise PermissionDenied(f"'{relative}' is not readable by the dataset server") from None
    try:
        size = os.fstat(handle.fileno()).st_size
        span = parse_range(range_header, size)
        start, end = span if span else (0, size - 1)
        count = max(0, end - start + 1)
        if count and hasattr(os, "posix_fadvise"):  # start reading a cold file now, in this thread
            os.posix_fadvise(handle.fileno(), start, count, os.POSIX_FADV_WILLNEED)
    except BaseException:
        handle.close()
        raise
    return (206 if span else 200), _Slice(handle, start, count)


def _batch_open(root: Path, prefix: str, items: list[tuple[str, str | None]]) -> tuple[bytes, list[_Slice]]:
    """Resolve, confine and open every key (run it in a thread). Returns the frame head (the
    entries of every key, see ``bioengine_datasets_client.batch``) and the open file slices
    whose bytes follow it, in order."""
    entries: list[dict[str, Any]] = []
    slices: list[_Slice] = []
    budget = BATCH_MAX_BYTES
    paths = DatasetPaths(root)
    try:
        for key, byte_range in items:
            relative = f"{prefix}/{key}" if prefix else key
            try:
                status, piece = _open_slice(paths, relative, byte_range)
            except NotFound as exc:
                entries.append(error_entry(404, str(exc)))
            except PermissionDenied as exc:
                entries.append(error_entry(403, str(exc)))
            except RangeNotSatisfiable as exc:
                entries.append(error_entry(416, str(exc)))
            else:
                slices.append(piece)
                budget -= piece.count
                if budget < 0:
                    raise _TooLarge(
                        f"a batch answer holds at most {BATCH_MAX_BYTES} bytes; '{relative}' does not fit: "
                        "ask for fewer keys"
                    )
                entries.append(data_entry(status, piece.count))
    except OSError as exc:
        _close(slices)
        if exc.errno == errno.EMFILE:
            raise _Busy("the dataset server has too many files open; try again") from None
        raise
    except BaseException:
        _close(slices)
        raise
    return frame_head(entries), slices


def _close(slices: list[_Slice]) -> None:
    for piece in slices:
        piece.handle.close()


async def batch(request: web.Request) -> web.StreamResponse:
    """``POST /data/{dataset}/{prefix}``: many keys below ``prefix`` in one request. The token is
    checked once; every key is confined on its own; resolving and opening happen in one thread
    hop, and the bytes go from the page cache to the socket with ``sendfile`` (no copy through
    Python; the thread pass has asked the kernel to read cold files ahead)."""
    dataset = await _readable(request, request.match_info["dataset"])
    try:
        payload = await request.json()
    except ValueError:
        raise InvalidRequest("the batch body is not JSON") from None
    items = _batch_items(payload)
    head, slices = await asyncio.to_thread(
        _batch_open, dataset.root, request.match_info.get("path", ""), items
    )
    try:
        response = web.StreamResponse(headers={"Content-Type": BATCH_TYPE, **CORS_HEADERS})
        response.content_length = len(head) + sum(piece.count for piece in slices)
        await response.prepare(request)
        await response.write(head)
        for piece in slices:
            await _send_slice(request, piece)
        await response.write_eof()
        return response
    finally:
        _close(slices)


async def _send_slice(request: web.Request, piece: _Slice) -> None:
    """``piece`` to the client with sendfile. While the socket takes the bytes at once (the
    usual case: a client reading as fast as we send), call it directly; otherwise, or for a TLS
    transport, through ``loop.sendfile``, which waits for the socket (and pauses reading, and
    re-registers the socket with epoll: about 0.1 ms a call, more than the copy it saves)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client went away")
    offset, remaining = piece.offset, piece.count
    sock = transport.get_extra_info("socket")
    if sock is not None and transport.get_extra_info("sslcontext") is None:
        while remaining and transport.get_write_buffer_size() == 0:  # nothing queued ahead of us
            try:
                sent = os.sendfile(sock.fileno(), piece.handle.fileno(), offset, remaining)
            except BlockingIOError:
                break
            if sent == 0:
                break
            offset, remaining = offset + sent, remaining - sent
    if remaining:
        sent = await asyncio.get_running_loop().sendfile(transport, piece.handle, offset, remaining)
        if sent != remaining:
            transport.close()  # the file shrank under us: cut the answer short, the client retries
            raise ConnectionResetError("a file changed while being sent")


def build_app(registry: DatasetRegistry, validator: TokenValidator, admins: list[str]) -> web.Application:
    app = web.Application(middlewares=[_metered, _errors_and_cors])
    app[REGISTRY], app[VALIDATOR], app[ADMINS] = registry, validator, admins
    app.router.add_get("/health", health)
    app.router.add_get("/datasets", list_datasets)
    app.router.add_get("/datasets/{dataset}", dataset_info)
    app.router.add_get("/data/{dataset}", data)
    app.router.add_get("/data/{dataset}/{path:.*}", data)
    app.router.add_post("/data/{dataset}", batch)
    app.router.add_post("/data/{dataset}/{path:.*}", batch)
    app.router.add_route("OPTIONS", "/{tail:.*}", health)
    return app
