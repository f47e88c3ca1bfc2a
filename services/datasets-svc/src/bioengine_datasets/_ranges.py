"""HTTP Range (RFC 9110, single range): a pure parser, tested on its own."""

from __future__ import annotations

import re

__all__ = ["RangeNotSatisfiable", "parse_range"]

# RFC 9110 14.1.1: optional whitespace is SP or HTAB, positions are ASCII digits only
# (str.isdigit() and int() would take any script's digits, and str.strip() other spaces).
_OWS = " \t"
_SPEC = re.compile(r"[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*")
_BEYOND_ANY_FILE = 10**30


class RangeNotSatisfiable(ValueError):
    """The range cannot be served for this size: answer 416 with ``Content-Range: bytes */size``."""

    def __init__(self, message: str, size: int):
        super().__init__(message)
        self.size = size


def _position(digits: str) -> int:
    """A position of ASCII digits; one too long to matter (even past int()'s digit limit)
    is simply larger than any file."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 30 else _BEYOND_ANY_FILE


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_inclusive)`` for ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``; ``None`` for
    the whole file (no header, or one we ignore as the RFC allows: other units, several ranges).
    Anything else that claims the ``bytes`` unit is malformed (416).
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    unit = unit.strip(_OWS)
    if not unit.isascii() or unit.lower() != "bytes" or "," in spec:
        return None
    shown = header if len(header) <= 100 else f"{header[:100]}..."
    match = _SPEC.fullmatch(spec)
    if match is None or not (match.group(1) or match.group(2)):
        raise RangeNotSatisfiable(f"malformed range '{shown}'", size)
    first, last = match.groups()
    if not first:  # suffix: the last n bytes
        length = _position(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(f"suffix range '{shown}' selects nothing of {size} bytes", size)
        return max(0, size - length), size - 1
    start = _position(first)
    end = _position(last) if last else size - 1
    if start >= size:
        raise RangeNotSatisfiable(f"range '{shown}' starts at or after the end ({size} bytes)", size)
    if end < start:
        raise RangeNotSatisfiable(f"range '{shown}' ends before it starts", size)
    return start, min(end, size - 1)
