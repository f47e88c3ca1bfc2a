"""``bioengine call SERVICE_ID METHOD --arg NAME=VALUE``: any method of any service;
``bioengine call SERVICE_ID --list-methods``: its methods, with their parameters and summaries."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Any

from ._common import EXIT_USAGE, CliError, _call, _common_options, _print, _session, _timeout


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


def method_list(service: Any) -> list[dict[str, Any]]:
    """The methods of a remote service: ``[{name, description, parameters: [{name, type,
    required, description}]}]`` from the schemas the service registered (a method without a
    schema has no parameters listed)."""
    names = sorted(k for k in service if not str(k).startswith("_") and callable(service[k]))
    methods = []
    for name in names:
        schema = getattr(service[name], "__schema__", None) or {}
        parameters = schema.get("parameters") or {}
        required = set(parameters.get("required") or [])
        methods.append(
            {
                "name": name,
                "description": " ".join(str(schema.get("description") or "").split("\n\n")[0].split()),
                "parameters": [
                    {
                        "name": pname,
                        "type": _type_name(field),
                        "required": pname in required,
                        "description": str(field.get("description") or ""),
                    }
                    for pname, field in (parameters.get("properties") or {}).items()
                ],
            }
        )
    return methods


def _type_name(field: dict[str, Any]) -> str:
    if "type" in field:
        return str(field["type"])
    options = [str(o.get("type", "any")) for o in field.get("anyOf") or [] if isinstance(o, dict)]
    return " | ".join(options) or "any"


def format_methods(service_id: str, methods: list[dict[str, Any]]) -> list[str]:
    """What ``--list-methods`` prints: a line per method, then one per parameter."""
    lines = [f"{service_id}: {len(methods)} method(s)"]
    for method in methods:
        signature = ", ".join(p["name"] + ("" if p["required"] else "?") for p in method["parameters"])
        lines.append(
            f"  {method['name']}({signature})"
            + (f": {method['description']}" if method["description"] else "")
        )
        for p in method["parameters"]:
            lines.append(
                f"      {p['name']} ({p['type']}{', required' if p['required'] else ''})"
                + (f": {p['description']}" if p["description"] else "")
            )
    return lines


async def _list_methods(args: argparse.Namespace) -> list[dict[str, Any]]:
    async with _session(args, args.service_id, _timeout(args)) as worker:
        return method_list(worker.service)


def add_parser(sub: Any) -> None:
    call = sub.add_parser(
        "call",
        parents=[_common_options(False)],
        help="Call a method of any service: bioengine call SERVICE_ID METHOD --arg k=v",
    )
    call.add_argument("service_id", help="Service id, e.g. bioengine-worker or ws/client:bioengine-worker")
    call.add_argument("method", nargs="?", help="Method name, e.g. get_status")
    call.add_argument(
        "--list-methods",
        action="store_true",
        help="List the service's methods with their parameters instead of calling one",
    )
    call.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="Keyword argument; VALUE is parsed as JSON when possible (repeatable)",
    )


def run(args: argparse.Namespace) -> None:
    if args.list_methods:
        if args.method or args.arg:
            raise CliError("--list-methods takes no METHOD or --arg", EXIT_USAGE)
        methods = asyncio.run(_list_methods(args))
        if args.json:
            _print(methods, True)
        else:
            print("\n".join(format_methods(args.service_id, methods)))
        return
    if not args.method:
        raise CliError("give a METHOD to call, or --list-methods", EXIT_USAGE)
    _print(asyncio.run(_call(args, args.service_id, args.method, parse_arguments(args.arg))), args.json)
