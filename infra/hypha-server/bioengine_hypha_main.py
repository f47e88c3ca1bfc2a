"""Runs ``python -m hypha.server <arguments>`` on a socket bound by the process that starts it.

The embedded server's starter (``bioengine_common.local_stack.EmbeddedHypha``) binds the server's
port itself, holds it for the server's whole life and hands the socket down as file descriptor
``BIOENGINE_HYPHA_FD``: no other program can take the port between its choice and the server's
start, or while the server restarts. uvicorn serves on an inherited socket with its ``fd``
option; hypha.server's command line has no flag for it, so this adds it to hypha.server's one
``uvicorn.run`` call and then runs hypha.server as its command line would.
"""

import os
import runpy
import sys
from typing import Any

import uvicorn


def main() -> None:
    try:
        fd = int(os.environ.pop("BIOENGINE_HYPHA_FD"))
    except (KeyError, ValueError):
        raise SystemExit(
            "bioengine_hypha_main.py serves on a socket its starter binds (BIOENGINE_HYPHA_FD, set by "
            "bioengine_common.local_stack.EmbeddedHypha); to run the server by hand: python -m hypha.server"
        ) from None
    run = uvicorn.run

    def run_on_the_inherited_socket(app: Any, **options: Any) -> None:
        run(app, **options, fd=fd)

    uvicorn.run = run_on_the_inherited_socket
    sys.argv[0] = "hypha.server"
    runpy.run_module("hypha.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
