"""Log lines that a client cannot forge: control characters in kernelflow's log messages are escaped.

Names (graphs, datasets, jobs, models, methods) come from clients and end up in log messages; a
name holding a newline would otherwise start a line of its own that looks like the server's
(issue #15). The escaping happens once, where records are made, for every ``kernelflow.*``
logger, whatever handler or format the host application set up.

Contents: escape_control, install.
"""

from __future__ import annotations

import logging
import threading

# C0 controls (but tab), DEL and the C1/Unicode line breaks, as visible escapes.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c != 0x09}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x85: "\\x85", 0x2028: "\\u2028", 0x2029: "\\u2029"})
_lock = threading.Lock()
_installed = False


def escape_control(text: str) -> str:
    """``text`` with newlines and other control characters written as escapes."""
    return text.translate(_ESCAPES)


def install() -> None:
    """Make every ``kernelflow.*`` log record's message single-line (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args, **kwargs) -> logging.LogRecord:  # noqa: ANN002, ANN003 -- LogRecord's own signature
            record = previous(*args, **kwargs)
            if record.name.startswith("kernelflow"):
                try:
                    message = record.getMessage()
                except Exception:  # a bad format: leave it to the handler to report
                    return record
                safe = escape_control(message)
                if safe is not message and safe != message:
                    record.msg, record.args = safe, None
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
