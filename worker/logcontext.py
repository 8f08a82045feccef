"""What a log line is about: the message being handled and its workflow instance.

The pipeline (and the report activity) set the fields for the work they do; `ContextFilter`
adds them, and the current trace id, to every record a handler emits, so that the JSON log
format (`worker.telemetry.logs`) shows them as fields. Nothing reads them in the text format.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from dapr.ext.workflow.logger import LoggerOptions
from opentelemetry import trace

FIELDS = ("instance_id", "message_id", "topic")

_fields: ContextVar[dict[str, str]] = ContextVar("worker_log_fields", default={})  # noqa: B039


@contextmanager
def about(**fields: str | None) -> Iterator[None]:
    """Log lines in the block carry ``fields`` (those that are set), besides the outer ones."""
    token = _fields.set({**_fields.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _fields.reset(token)


def note(**fields: str | None) -> None:
    """From now until the enclosing `about` block ends, log lines also carry ``fields``."""
    given = {k: v for k, v in fields.items() if v}
    if given:
        _fields.set({**_fields.get(), **given})


def current() -> dict[str, str]:
    return dict(_fields.get())


class ContextFilter(logging.Filter):
    """Adds the fields of `about`/`note` and the current trace and span ids to each record
    (as attributes; a field the record already has is kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _fields.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        span = trace.get_current_span().get_span_context()
        if span.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        return True


# How the Dapr SDK's loggers (workflow client and runtime) write: set by the process's log
# set-up (python -m worker) before the service starts; None: the SDK's own text format.
_sdk_handler: logging.Handler | None = None


def set_sdk_handler(handler: logging.Handler | None) -> None:
    global _sdk_handler
    _sdk_handler = handler


def sdk_logger_options(level: str) -> LoggerOptions:
    """Options for the SDK's loggers: ``level``, and the process's format when it set one."""
    if _sdk_handler is None:
        return LoggerOptions(log_level=level.upper())
    formatter: Any = _sdk_handler.formatter
    return LoggerOptions(log_level=level.upper(), log_handler=_sdk_handler, log_formatter=formatter)
