"""``bioengine``: talk to a running BioEngine worker.

The server URL, workspace and token come from flags, then ``BIOENGINE_SERVER_URL``,
``BIOENGINE_WORKSPACE`` and ``BIOENGINE_TOKEN``, then the connection file that
``bioengine-worker`` writes into its workspace dir (``~/.bioengine/worker.json``).

One module per command group: :mod:`.status` (``status``, ``cluster status``), :mod:`.datasets`,
:mod:`.call`, :mod:`.apps` (what it prints in :mod:`.app_output`); the connection, options,
errors and printing they share are in :mod:`._common`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from bioengine_common import error_summary

from . import apps, call, datasets, status
from ._common import CliError, _common_options, _print_error
from .apps import read_app_folder

__all__ = ["CliError", "build_parser", "main", "read_app_folder"]

#: The function that runs each top-level command.
_COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "status": status.run_status,
    "cluster": status.run_cluster,
    "datasets": datasets.run,
    "call": call.run,
    "apps": apps.run,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bioengine",
        parents=[_common_options(True)],
        description="Talk to a running BioEngine worker.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    worker = argparse.ArgumentParser(add_help=False)
    worker.add_argument(
        "--service-id", default="bioengine-worker", help="Worker service id (default: %(default)s)"
    )
    status.add_parsers(sub, worker)
    datasets.add_parser(sub)
    call.add_parser(sub)
    apps.add_parser(sub, worker)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # hypha-rpc reports every normal disconnect as a warning on stdout; keep output parseable.
    for name in ("RPC", "websocket-client"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        _COMMANDS[args.command](args)
    except CliError as exc:
        _print_error(str(exc), exc, args.debug)
        sys.exit(exc.code)
    except Exception as exc:  # a bug or an unexpected remote error: one line, all of it with --debug
        _print_error(error_summary(exc), exc, args.debug)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted (a deployment in progress goes on in the background)", file=sys.stderr)
        sys.exit(130)
