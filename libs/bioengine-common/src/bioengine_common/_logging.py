"""Named loggers with one format, the current trace id in each line, and secrets masked."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from opentelemetry import trace

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [trace=%(trace_id)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# JWTs (three base64url parts, the first starting with eyJ) and "token=..." pairs.
_SECRET_PATTERNS = (
    re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+"),
    re.compile(r"(?i)((?:access_)?token[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,}]+"),
)


def mask_secrets(text: str) -> str:
    """Replace anything that looks like a token with ``***``."""
    text = _SECRET_PATTERNS[0].sub("***", text)
    return _SECRET_PATTERNS[1].sub(r"\1***", text)


class _ContextFilter(logging.Filter):
    """Adds ``trace_id`` and masks tokens, so no handler can leak one."""

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        record.trace_id = f"{span_context.trace_id:032x}" if span_context.is_valid else "-"
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def create_logger(
    name: str,
    level: int | str = logging.INFO,
    log_file: str | Path | None = None,
) -> logging.Logger:
    """Return the logger ``name`` writing to stderr and, if given, to ``log_file``.

    Calling it again for the same name replaces the handlers it added before instead of
    stacking duplicates, so every line is written once.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    for handler in [h for h in logger.handlers if getattr(h, "_bioengine", False)]:
        logger.removeHandler(handler)
        handler.close()
    for existing in [f for f in logger.filters if isinstance(f, _ContextFilter)]:
        logger.removeFilter(existing)
    logger.addFilter(_ContextFilter())

    formatter = logging.Formatter(LOG_FORMAT, DATE_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        path = Path(log_file).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._bioengine = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger
