"""``python -m bioengine_common.contracts --write DIR``: (re)generate api.md and SKILL.md in DIR;
``--check DIR``: exit 1 when they are stale."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._docs import COMMAND, render
from .worker import WORKER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bioengine_common.contracts", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, metavar="DIR", help="write the generated docs into DIR")
    group.add_argument("--check", type=Path, metavar="DIR", help="fail when the docs in DIR are stale")
    options = parser.parse_args(argv)
    stale = []
    for name, text in render(WORKER).items():
        path = (options.write or options.check) / name
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if options.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
        else:
            stale.append(str(path))
    if stale:
        print(f"stale: {', '.join(stale)}; regenerate with `{COMMAND}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
