"""``bioengine datasets list|info``: the datasets the worker serves to you."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from ._common import CliError, _call, _common_options, _print, _table


def format_datasets(datasets: dict[str, Any]) -> str:
    if not datasets:
        return "No datasets you may read."
    rows: list[tuple[str, ...]] = [("ID", "NAME", "ACCESS", "ZARR STORES")]
    for dataset_id, info in sorted(datasets.items()):
        stores = ", ".join(info.get("zarr_stores") or []) or "-"
        rows.append(
            (
                dataset_id,
                str(info.get("name") or dataset_id),
                "public" if info.get("public") else "restricted",
                stores,
            )
        )
    return "\n".join(_table(rows))


def add_parser(sub: Any) -> None:
    datasets = sub.add_parser("datasets", help="Datasets served by the worker")
    datasets_sub = datasets.add_subparsers(dest="datasets_command", required=True)
    datasets_sub.add_parser("list", parents=[_common_options(False)], help="Datasets you may read")
    info = datasets_sub.add_parser("info", parents=[_common_options(False)], help="One dataset in full")
    info.add_argument("dataset_id", help="Dataset id")
    datasets.set_defaults(service_id="bioengine-worker")


def run(args: argparse.Namespace) -> None:
    found = asyncio.run(_call(args, args.service_id, "list_datasets", {}))
    if args.datasets_command == "list":
        print(json.dumps(found, default=str) if args.json else format_datasets(found))
    elif args.dataset_id not in found:
        raise CliError(f"dataset '{args.dataset_id}' not found, or you may not read it", 1)
    else:
        _print(found[args.dataset_id], args.json)
