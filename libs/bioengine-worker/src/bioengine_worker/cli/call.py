"""``bioengine call SERVICE_ID METHOD --arg NAME=VALUE``: any method of any service."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Any

from ._common import EXIT_USAGE, CliError, _call, _common_options, _print


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_arguments(pairs: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` to keyword arguments; values are JSON when they parse as JSON."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise CliError(f"--arg expects NAME=VALUE, got '{pair}'", EXIT_USAGE)
        kwargs[key] = _parse_value(value)
    return kwargs


def add_parser(sub: Any) -> None:
    call = sub.add_parser(
        "call",
        parents=[_common_options(False)],
        help="Call a method of any service: bioengine call SERVICE_ID METHOD --arg k=v",
    )
    call.add_argument("service_id", help="Service id, e.g. bioengine-worker or ws/client:bioengine-worker")
    call.add_argument("method", help="Method name, e.g. get_status")
    call.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="Keyword argument; VALUE is parsed as JSON when possible (repeatable)",
    )


def run(args: argparse.Namespace) -> None:
    _print(asyncio.run(_call(args, args.service_id, args.method, parse_arguments(args.arg))), args.json)
