"""Logging setup: readable text, or one JSON object per line for log shippers.

Context (job, run_id, ticker) and a run's figures (``RUN_FIELDS``: status, trigger, slot,
counts, duration) travel in ``extra=`` and become JSON fields of their own.

Under systemd, stderr is usually a stream into the journal. systemd says so with
``JOURNAL_STREAM=DEV:INODE`` (systemd.exec(5)); the variable is inherited by children whose
stderr may go elsewhere, so it counts only when it names our stderr. On the journal, text
lines omit the timestamp (the journal adds its own), and every line starts with a
``<N>`` syslog priority prefix (sd-daemon(3)) so that ``journalctl -p warning`` finds the
warnings and errors; the journal strips the prefix before storing the line.

Timestamps are UTC with an explicit offset, in text and JSON alike
(``2026-03-02T10:05:00.123+00:00``), never the host's local time: the API uses the same
rule, so a log line and an API answer about the same run show the same clock.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

CONTEXT_FIELDS = ("job", "run_id", "ticker")
#: What a run's summary line carries besides its context, each its own JSON key, so a log
#: shipper can filter and aggregate without parsing the message.
RUN_FIELDS = (
    "status",
    "trigger",
    "slot",
    "fetched",
    "failed",
    "fresh",
    "rows",
    "duration_s",
    "reason",
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"

# Third-party chatter that would flood an unattended daemon's logs.
NOISY_LOGGERS = ("yfinance", "peewee", "urllib3", "uvicorn.access", "watchfiles")


def one_line(text: object) -> str:
    """``text`` on one line, runs of whitespace collapsed to one space.

    The one rule for text from elsewhere (an exception, a Redis reply, a reason) placed
    where a newline would break what reads it: a log line, a systemd STATUS=, a table cell.
    """
    return " ".join(str(text).split())


def record_time(record: logging.LogRecord) -> str:
    """When the record was made: UTC, milliseconds, explicit offset (``...T10:05:00.123+00:00``)."""
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """The standard text formatter, with ``%(asctime)s`` in UTC with its offset."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return record_time(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": record_time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in (*CONTEXT_FIELDS, *RUN_FIELDS):
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def syslog_priority(levelno: int) -> int:
    """The syslog priority journald files a record under (3 err, 4 warning, 6 info, 7 debug)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalPrefixFormatter(logging.Formatter):
    """Prefixes each line with ``<N>``: journald splits at newlines and reads every line's own.

    Without the prefix the journal files everything at the unit's SyslogLevel= (info), and
    ``journalctl -p warning`` would show none of the daemon's warnings.
    """

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = self._inner.format(record)
        return "\n".join(prefix + line for line in text.split("\n"))


def is_journal_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when ``$JOURNAL_STREAM`` names this very stream (not one a parent had)."""
    dev, sep, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or not backed by a descriptor
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def build_handler(
    fmt: str = "text",
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """The stderr handler for ``fmt`` ("text" or "json"), adapted to the journal if it is one."""
    out = sys.stderr if stream is None else stream
    env = os.environ if environ is None else environ
    journal = is_journal_stream(out, env)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif journal:
        formatter = TextFormatter(JOURNAL_TEXT_FORMAT)
    else:
        formatter = TextFormatter(TEXT_FORMAT)
    if journal:
        formatter = JournalPrefixFormatter(formatter)
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    return handler


def configure_logging(
    level: str = "INFO",
    fmt: str = "text",
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Route every logger to one stderr handler; call once, from the command's entry point."""
    root = logging.getLogger()
    root.handlers[:] = [build_handler(fmt, stream, environ)]
    root.setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
