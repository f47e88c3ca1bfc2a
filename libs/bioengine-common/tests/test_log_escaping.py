"""Log lines cannot be forged: every record is one line, control characters escaped, tracebacks
on marked continuation lines (bioengine_common._logging)."""

import itertools
import logging
import re
import sys

import pytest

from bioengine_common import create_logger, mint_token
from bioengine_common._logging import CONTINUATION, SafeFormatter, escape_control

RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
FORGED = "2026-01-01 00:00:00 INFO    datasets [trace=-] forged"
_names = itertools.count()


def _unescape(text: str) -> str:
    """The inverse of escape_control, written independently: proves the escaping is unambiguous."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "\\":
            out.append(text[i])
            i += 1
            continue
        kind = text[i + 1]
        if kind in "\\tnr":
            out.append({"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}[kind])
            i += 2
        elif kind == "x":
            out.append(chr(int(text[i + 2 : i + 4], 16)))
            i += 4
        elif kind == "u":
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
        else:
            raise AssertionError(f"dangling escape in {text!r}")
    return "".join(out)


class _Log:
    """A fresh logger writing to a file; ``lines()`` reads back what the file holds."""

    def __init__(self, tmp_path):
        self.path = tmp_path / f"log{next(_names)}.log"
        self.logger = create_logger(f"bioengine.test.escape{next(_names)}", logging.DEBUG, self.path)

    def raw(self) -> bytes:
        for handler in self.logger.handlers:
            handler.flush()
        return self.path.read_bytes()

    def lines(self) -> list[str]:
        return self.raw().decode("utf-8").split("\n")[:-1]


@pytest.fixture
def log(tmp_path):
    return _Log(tmp_path)


def _assert_clean(raw: bytes) -> None:
    text = raw.decode("utf-8")  # the file is valid UTF-8 (no lone surrogate reached it)
    bad = [c for c in text if c != "\n" and (ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029")]
    assert not bad, f"control characters reached the log: {bad!r}"


EXPECTED_ESCAPES = {
    **{chr(code): f"\\x{code:02x}" for code in range(32)},
    "\t": "\\t",
    "\n": "\\n",
    "\r": "\\r",
    "\x7f": "\\x7f",
    **{chr(code): f"\\x{code:02x}" for code in range(0x80, 0xA0)},
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
    "\u202e": "\\u202e",  # right-to-left override
    "\u2066": "\\u2066",  # left-to-right isolate
    "\u200f": "\\u200f",  # right-to-left mark
    "\ud800": "\\ud800",  # lone surrogate (e.g. from a JSON "\ud800" escape)
    "\\": "\\\\",
}


@pytest.mark.parametrize("char", list(EXPECTED_ESCAPES), ids=lambda c: f"U+{ord(c):04X}")
def test_each_control_character_is_escaped(char):
    assert escape_control(f"a{char}b") == f"a{EXPECTED_ESCAPES[char]}b"


@pytest.mark.parametrize("char", list(EXPECTED_ESCAPES), ids=lambda c: f"U+{ord(c):04X}")
def test_each_control_character_in_an_argument_stays_on_one_line(log, char):
    log.logger.info("GET %s 404", f"/data/x/a{char}b")
    raw = log.raw()
    _assert_clean(raw)
    lines = log.lines()
    assert len(lines) == 1 and lines[0].endswith(f"GET /data/x/a{EXPECTED_ESCAPES[char]}b 404")


def test_printable_text_of_any_script_is_kept():
    text = "dataset 'zebrafish-Ω' of José: 日本語 ١٢٣ emoji 🧬 tab-free, 'quotes' \"too\""
    assert escape_control(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        "\\n",  # a literal backslash and n: not a line feed
        "\n",
        "\\\n",
        "\\x00",
        "\x00",
        "C:\\Users\\new",
        "a\r\n2026-01-01 00:00:00 INFO forged",
        "".join(map(chr, range(0, 0xA1))),
        "\u2028\u2029\ud800\udfff\\u2028",
    ],
)
def test_escaping_is_unambiguous(text):
    escaped = escape_control(text)
    assert "\n" not in escaped and "\r" not in escaped
    assert _unescape(escaped) == text


def test_a_forged_record_in_the_message_itself_is_escaped(log):
    log.logger.warning(f"refused path a\r\n{FORGED}\x00\x1b[31m")
    lines = log.lines()
    assert len(lines) == 1 and RECORD_START.match(lines[0])
    assert lines[0].endswith(f"refused path a\\r\\n{FORGED}\\x00\\x1b[31m")
    _assert_clean(log.raw())


def test_arguments_and_message_are_escaped_alike(log):
    log.logger.info("user %s asked for %s", "eve\nINFO x", "a\x1bb")
    log.logger.info("user eve\nINFO x asked for a\x1bb")
    first, second = log.lines()
    assert first.split("] ", 1)[1] == second.split("] ", 1)[1]
    assert first.endswith("user eve\\nINFO x asked for a\\x1bb")


def test_exception_messages_stay_on_marked_continuation_lines(log):
    try:
        raise ValueError(f"bad dataset 'x\r\n{FORGED}\r\n\x00\x1b]0;title\x07'")
    except ValueError:
        log.logger.exception("Request for %s failed", "x\ny")
    log.logger.info("next record")
    raw = log.raw()
    _assert_clean(raw)
    lines = log.lines()
    records = [line for line in lines if RECORD_START.match(line)]
    assert len(records) == 2 and records[0].endswith("Request for x\\ny failed")
    assert records[1].endswith("next record") and lines[-1] == records[1]
    continuation = lines[1:-1]
    assert continuation and all(line.startswith(CONTINUATION) for line in continuation)
    assert continuation[0] == f"{CONTINUATION}Traceback (most recent call last):"
    assert continuation[-3:] == [  # the message's own line breaks: visibly marked, never a record
        f"{CONTINUATION}ValueError: bad dataset 'x\\r",
        f"{CONTINUATION}{FORGED}\\r",
        f"{CONTINUATION}\\x00\\x1b]0;title\\x07'",
    ]
    assert b"\x00" not in raw and b"\x1b" not in raw and b"\x07" not in raw


def test_chained_exceptions_are_marked_too(log):
    try:
        try:
            raise KeyError("inner\nINFO fake")
        except KeyError as exc:
            raise RuntimeError("outer\u2028INFO fake") from exc
    except RuntimeError:
        log.logger.error("failed", exc_info=True)
    lines = log.lines()
    assert RECORD_START.match(lines[0]) and len(lines) > 4
    assert all(line.startswith(CONTINUATION) for line in lines[1:])
    assert any("direct cause" in line for line in lines)
    assert any(line.endswith("RuntimeError: outer\\u2028INFO fake") for line in lines)


def test_a_traceback_cached_unescaped_by_another_formatter_is_escaped_anyway(log):
    try:
        raise ValueError("x\r\nFORGED")
    except ValueError:
        record = log.logger.makeRecord(
            log.logger.name, logging.ERROR, __file__, 1, "boom", None, sys.exc_info()
        )
    logging.Formatter().format(record)  # fills record.exc_text, unescaped
    assert "\r\n" in record.exc_text
    text = SafeFormatter().format(record)
    assert "\r" not in text and all(line.startswith(CONTINUATION) for line in text.split("\n")[1:])
    record.exc_info = None  # only the cached text left (e.g. a record from another process)
    text = SafeFormatter().format(record)
    assert "\r" not in text and text.split("\n")[-1] == f"{CONTINUATION}FORGED"


def test_stack_info_is_marked(log):
    log.logger.info("here", stack_info=True)
    lines = log.lines()
    assert RECORD_START.match(lines[0]) and len(lines) > 1
    assert all(line.startswith(CONTINUATION) for line in lines[1:])


def test_records_of_a_child_logger_are_escaped_by_the_parents_handlers(log):
    child = logging.getLogger(f"{log.logger.name}.child")  # no filter of ours on it
    child.propagate = True
    child.warning("child says %s", "a\nb")
    lines = log.lines()
    assert len(lines) == 1 and lines[0].endswith("child says a\\nb") and "[trace=-]" in lines[0]


def test_tokens_are_masked_in_messages_and_tracebacks(log):
    token = mint_token("s" * 32, "someone", "ws")
    log.logger.info("GET /x?token=%s\n", token)
    try:
        raise PermissionError(f"refused token={token}\nsecond line {token}")
    except PermissionError:
        log.logger.exception("refused")
    raw = log.raw().decode()
    assert token not in raw and token[-20:] not in raw
    assert "GET /x?token=***\\n" in raw and "refused token=***" in raw and "second line ***" in raw


def test_the_stderr_handler_escapes_too(capsys):
    logger = create_logger(f"bioengine.test.stderr{next(_names)}")
    logger.info("a\r\nb\x00")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("a\\r\\nb\\x00\n")
