"""The JSON log format: one object per line, the message's fields where they apply."""

from __future__ import annotations

import io
import json
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context

from worker import logcontext, traces
from worker.telemetry import logs
from worker.telemetry.logs import WorkerJsonFormatter

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def json_lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through the JSON formatter and the context filter into a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(WorkerJsonFormatter())
    handler.addFilter(logcontext.ContextFilter())
    logger = logging.getLogger("worker.test_json_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_outside_any_message_has_the_four_fields(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = json_lines
    logger.info("worker ready: %s", "yes")
    [line] = _lines(out)
    assert list(line) == ["time", "level", "logger", "message"]
    assert line["level"] == "INFO" and line["logger"] == "worker.test_json_logs"
    assert line["message"] == "worker ready: yes"
    assert line["time"].endswith("+00:00")  # ISO 8601, UTC


def test_a_line_inside_a_message_carries_its_fields_and_trace(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = json_lines
    with (
        traces.processing("workflow.start", "m-1", TRACEPARENT),
        logcontext.about(topic="workflow.start", message_id="m-1"),
    ):
        logger.warning("before the instance is known")
        logcontext.note(instance_id="order-1")
        logger.warning("after")
    logger.info("outside again")
    before, after, outside = _lines(out)
    assert before["topic"] == "workflow.start" and before["message_id"] == "m-1"
    assert "instance_id" not in before
    assert after["instance_id"] == "order-1"
    # the trace id works without an SDK too: the received context is current
    assert after["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert len(after["span_id"]) == 16
    assert not {"topic", "message_id", "instance_id", "trace_id"} & outside.keys()


def test_an_audit_line_keeps_its_fields_as_fields(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    _, out = json_lines
    audit = logging.getLogger("worker.audit")
    handler = logging.getLogger("worker.test_json_logs").handlers[0]
    audit.addHandler(handler)
    saved = audit.propagate, audit.level
    audit.propagate = False
    audit.setLevel(logging.INFO)
    try:
        fields = {"topic": "t", "message_id": "m", "outcome": "drop", "reason": None}
        audit.info(json.dumps(fields))
    finally:
        audit.removeHandler(handler)
        audit.propagate = saved[0]
        audit.setLevel(saved[1])
    [line] = _lines(out)
    assert line["message"] == "audit"
    assert {k: line[k] for k in fields} == fields


def test_an_exception_stays_on_one_line(json_lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = json_lines
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    assert len(out.getvalue().splitlines()) == 1
    [line] = _lines(out)
    assert "RuntimeError: boom" in line["exc_info"]


def test_the_filter_keeps_a_field_the_record_has() -> None:
    record = logging.LogRecord("worker", logging.INFO, __file__, 1, "m", None, None)
    record.topic = "given"
    with logcontext.about(topic="context", message_id="m-1"):
        logcontext.ContextFilter().filter(record)
    assert (record.__dict__["topic"], record.__dict__["message_id"]) == ("given", "m-1")


@pytest.fixture
def configured() -> Iterator[None]:
    """Undo what `logs.configure` changes in the process's logging."""
    worker_log = logging.getLogger("worker")
    warnings_log = logging.getLogger("py.warnings")
    saved = (
        list(worker_log.handlers),
        worker_log.level,
        worker_log.propagate,
        list(warnings_log.handlers),
        warnings_log.propagate,
        logging.lastResort,
        threading.excepthook,
    )
    yield
    worker_log.handlers[:] = saved[0]
    worker_log.setLevel(saved[1])
    worker_log.propagate = saved[2]
    warnings_log.handlers[:] = saved[3]
    warnings_log.propagate = saved[4]
    logging.lastResort = saved[5]
    threading.excepthook = saved[6]
    logging.captureWarnings(False)
    logcontext.set_sdk_handler(None)


def test_json_mode_makes_everything_json(
    configured: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's loggers, the SDK's (their own handler), other libraries' unhandled
    warnings and Python warnings all come out as JSON lines."""
    monkeypatch.setattr(logging.root, "handlers", [])  # as in the worker: none (not pytest's)
    handler = logs.configure("json", "INFO")
    assert isinstance(handler, logging.StreamHandler)
    logging.getLogger("worker.x").info("worker line")
    options = logcontext.sdk_logger_options("warning")
    sdk = logging.getLogger("durabletask-test-json")
    sdk.addHandler(options.log_handler)
    sdk.propagate = False
    options.log_handler.setLevel(str(options.log_level))
    sdk.warning("sdk line")
    sdk.info("sdk info: below the SDK's level")
    logging.getLogger("some.library").warning("library line")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("python warning", UserWarning, stacklevel=1)
    sdk.removeHandler(options.log_handler)
    err = capsys.readouterr().err.splitlines()
    lines = [json.loads(line) for line in err]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("worker.x", "INFO"),
        ("durabletask-test-json", "WARNING"),
        ("some.library", "WARNING"),
        ("py.warnings", "WARNING"),
    ]


def test_text_mode_is_as_before(configured: None, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("text", "INFO")
    with logcontext.about(topic="t", message_id="m"):
        logging.getLogger("worker.x").info("plain")
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(" INFO worker.x: plain")
    assert logcontext.sdk_logger_options("warning").log_level == "WARNING"


def test_outside_a_trace_no_trace_id() -> None:
    token = otel_context.attach(otel_context.Context())
    try:
        record = logging.LogRecord("worker", logging.INFO, __file__, 1, "m", None, None)
        logcontext.ContextFilter().filter(record)
        assert not hasattr(record, "trace_id")
    finally:
        otel_context.detach(token)
