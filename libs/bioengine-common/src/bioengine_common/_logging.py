"""Named loggers with one format, the current trace id in each line, secrets masked, and
control characters escaped so that no logged value can forge a line."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from opentelemetry import trace

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [trace=%(trace_id)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
#: Starts every line of a traceback or stack after a record's first line, so that no line of
#: one (an exception message may carry request data) can pass for a record of its own.
CONTINUATION = "  | "

# JWTs (three base64url parts, the first starting with eyJ) and "token=..." pairs.
_SECRET_PATTERNS = (
    re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+"),
    re.compile(r"(?i)((?:access_)?token[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,}]+"),
)

# What gets escaped: the backslash (see escape_control), every C0 control (NUL..US, with
# TAB, LF, CR, ESC), DEL, every C1 control (with NEL U+0085), the Unicode line and paragraph
# separators (U+2028/9), the bidirectional formatting controls (they make a line display in
# another order than it was written) and lone surrogates (a UTF-8 log file cannot hold them:
# the record would be dropped).
_ESCAPED = re.compile(
    "[\\\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SHORT = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    r"""``text`` on one line, with nothing a terminal or a log reader would act on.

    CR, LF and TAB become ``\r``, ``\n``, ``\t``; the other C0 controls, DEL and the C1
    controls become ``\xNN`` (NUL ``\x00``, ESC ``\x1b``, NEL ``\x85``); the Unicode line and
    paragraph separators, the bidirectional formatting controls and lone surrogates become
    ``\uNNNN``. Everything else, every printable character of any script included, is kept.

    The backslash itself is doubled (``\\``). That costs a little readability for the rare
    message with a backslash, and buys an unambiguous line: without it, a request for
    ``/a%5Cn`` (a backslash, then ``n``) and one for ``/a%0A`` (a line feed) would be logged
    alike, and a reader could not tell an injection attempt from an odd file name. With it,
    every logged line maps back to exactly one original text.
    """
    if _ESCAPED.search(text) is None:
        return text
    return _ESCAPED.sub(_escape_one, text)


def mask_secrets(text: str) -> str:
    """Replace anything that looks like a token with ``***``."""
    text = _SECRET_PATTERNS[0].sub("***", text)
    return _SECRET_PATTERNS[1].sub(r"\1***", text)


def _continuation(block: str) -> str:
    """A traceback (or stack) as continuation lines: split only at its own line feeds, every
    piece escaped and marked with CONTINUATION."""
    return "".join(f"\n{CONTINUATION}{escape_control(line)}" for line in block.rstrip("\n").split("\n"))


class SafeFormatter(logging.Formatter):
    """The one log format of BioEngine: every record is one line, its message (after
    ``%``-formatting, so arguments are covered) masked and escaped by :func:`escape_control`;
    a traceback or a stack follows on continuation lines that start with ``CONTINUATION``,
    masked and escaped too. No control character of a logged value reaches the output."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT, DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        # The console and the file handler share this formatter: format each record once.
        cached = record.__dict__.get("_bioengine_text")
        if cached is not None and cached[0] == id(self):
            return str(cached[1])
        text = self._format(record)
        record._bioengine_text = (id(self), text)
        return text

    def _format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        if not hasattr(record, "trace_id"):  # a record from a logger without our filter
            record.trace_id = _trace_id()
        text = escape_control(mask_secrets(self.formatMessage(record)))
        # Never the cached record.exc_text: another formatter may have filled it in unescaped.
        if record.exc_info:
            text += _continuation(mask_secrets(self.formatException(record.exc_info)))
        elif record.exc_text:
            text += _continuation(mask_secrets(record.exc_text))
        if record.stack_info:
            text += _continuation(mask_secrets(self.formatStack(record.stack_info)))
        return text


def _trace_id() -> str:
    span_context = trace.get_current_span().get_span_context()
    return f"{span_context.trace_id:032x}" if span_context.is_valid else "-"


class _ContextFilter(logging.Filter):
    """Adds ``trace_id`` (while the span is current) and masks tokens, also for handlers that
    others add to the logger (e.g. pytest's); escaping is the formatter's job."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = _trace_id()
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class TraceIdSuffix(logging.Filter):
    """For log lines this package does not format (Ray workers: the run_code task, the app
    deployer, app replicas, user code): `` [trace=<id>]`` after each record made while a span is
    current, so those lines join the request's trace too. Once per record, whatever the number
    of handlers it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_trace_suffixed", False) or hasattr(record, "trace_id"):
            return True  # already suffixed, or one of ours (its format has the trace id)
        trace_id = _trace_id()
        if trace_id != "-":
            record.msg, record.args = f"{record.getMessage()} [trace={trace_id}]", None
        record._trace_suffixed = True
        return True


def trace_ids_in_process_logs() -> None:
    """Add :class:`TraceIdSuffix` to every handler of the root, ``ray`` and ``ray.serve`` loggers
    of this process (idempotent; cheap enough to call on each request)."""
    for name in (None, "ray", "ray.serve"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, TraceIdSuffix) for f in handler.filters):
                handler.addFilter(TraceIdSuffix())


def create_logger(
    name: str,
    level: int | str = logging.INFO,
    log_file: str | Path | None = None,
) -> logging.Logger:
    """Return the logger ``name`` writing to stderr and, if given, to ``log_file``, through
    :class:`SafeFormatter`.

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

    formatter = SafeFormatter()
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
