"""Logging setup: readable text, or one JSON object per line for log shippers.

Context (job, run_id, ticker) travels in ``extra=`` and becomes JSON fields. Under
systemd (JOURNAL_STREAM set) text lines omit the timestamp: the journal adds its own.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

CONTEXT_FIELDS = ("job", "run_id", "ticker")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter that would flood an unattended daemon's logs.
    for noisy in ("yfinance", "peewee", "urllib3", "uvicorn.access", "watchfiles"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
