"""HTTP Range (RFC 9110, single range): a pure parser, tested on its own."""

from __future__ import annotations

__all__ = ["RangeNotSatisfiable", "parse_range"]


class RangeNotSatisfiable(ValueError):
    """The range cannot be served for this size: answer 416 with ``Content-Range: bytes */size``."""

    def __init__(self, message: str, size: int):
        super().__init__(message)
        self.size = size


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_inclusive)`` for ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``; ``None`` for
    the whole file (no header, or one we ignore as the RFC allows: other units, several ranges).
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if (
        not dash
        or not (first.isdigit() or first == "")
        or not (last.isdigit() or last == "")
        or (not first and not last)
    ):
        raise RangeNotSatisfiable(f"malformed range '{header}'", size)
    if not first:  # suffix: the last n bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(f"suffix range '{header}' selects nothing of {size} bytes", size)
        return max(0, size - length), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size:
        raise RangeNotSatisfiable(f"range '{header}' starts at or after the end ({size} bytes)", size)
    if end < start:
        raise RangeNotSatisfiable(f"range '{header}' ends before it starts", size)
    return start, min(end, size - 1)
