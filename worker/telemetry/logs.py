"""The worker's log output: text for a terminal (the default) or JSON, one object per line.

A JSON line has ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``, plus, where
they apply, ``instance_id``, ``message_id``, ``topic``, ``trace_id`` and ``span_id``
(`worker.logcontext`), ``exc_info`` for an exception, and the fields of an audit line
(logger ``worker.audit``, whose text-format message is a JSON object) as fields of their own.

In JSON mode every line the process logs is JSON: the worker's loggers, the Dapr SDK's (through
`worker.logcontext.set_sdk_handler`), any other library's warnings (Python's last-resort
handler) and Python warnings.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from worker import logcontext

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
AUDIT_LOGGER = "worker.audit"


class WorkerJsonFormatter(JsonFormatter):
    """python-json-logger's formatter with the worker's field names; audit lines' fields are
    lifted out of their message."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            reserved_attrs=[*RESERVED_ATTRS, "taskName"],  # taskName: Python 3.12+, unused
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        rest = {k: v for k, v in log_data.items() if k not in _OWN_FIELDS}
        own: dict[str, Any] = {k: log_data[k] for k in _OWN_ORDER if k in log_data}
        log_data.clear()
        log_data.update(own)  # these first, for a person reading the raw lines
        log_data.update(rest)
        if record.name == AUDIT_LOGGER:
            try:
                fields = json.loads(record.getMessage())
            except ValueError:
                return
            if isinstance(fields, dict):
                log_data["message"] = "audit"
                for key, value in fields.items():
                    if key not in _OWN_FIELDS:
                        log_data[key] = value


_OWN_ORDER = ("time", "level", "logger", "message")
_OWN_FIELDS = frozenset(_OWN_ORDER)


class _Forward(logging.Handler):
    """Hands records to another handler (its format, filters and lock): the Dapr SDK sets this
    one's level and formatter as it likes, and its lines still come out like the worker's."""

    def __init__(self, target: logging.Handler, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._target = target

    def emit(self, record: logging.LogRecord) -> None:
        self._target.handle(record)


def configure(log_format: Literal["text", "json"], level: str) -> logging.Handler:
    """Set up the process's log output; returns the worker's handler (logger ``worker``)."""
    handler = logging.StreamHandler()
    worker_log = logging.getLogger("worker")
    if log_format == "json":
        handler.setFormatter(WorkerJsonFormatter())
        handler.addFilter(logcontext.ContextFilter())
        logcontext.set_sdk_handler(_Forward(handler))
        # Records no handler takes (other libraries' warnings) and Python warnings: JSON too.
        logging.lastResort = _Forward(handler, logging.WARNING)
        logging.captureWarnings(True)
        warnings_log = logging.getLogger("py.warnings")
        warnings_log.addHandler(_Forward(handler, logging.WARNING))
        warnings_log.propagate = False
        threading.excepthook = _log_thread_crash
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
        logcontext.set_sdk_handler(None)
    worker_log.addHandler(handler)  # the worker's loggers; the SDK's have handlers of their own
    worker_log.setLevel(level.upper())
    worker_log.propagate = False
    return handler


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("worker").error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )
