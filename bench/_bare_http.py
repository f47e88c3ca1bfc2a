"""A bare file server on loopback, for ``bench/datasets_stream.py``: aiohttp answering each GET
with the file's bytes, read at once in the handler, with no token check, no thread hop, no
access log, no metrics, no range or ETag handling. Reading the same Zarr array from it with
zarr's fsspec HTTP store gives the floor of a tile read over HTTP on this machine.

    python bench/_bare_http.py <directory> <port>
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web


def main() -> None:
    root = Path(sys.argv[1]).resolve()
    port = int(sys.argv[2])

    async def read(request: web.Request) -> web.Response:
        path = (root / request.match_info["path"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{path:.*}", read)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
