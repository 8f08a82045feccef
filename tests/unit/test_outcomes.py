"""Which sidecar errors are worth a retry, and which mean the request can never succeed."""

from __future__ import annotations

import threading

import grpc
import pytest

from tests.unit.fakes import FakeRpcError
from worker import outcomes
from worker.outcomes import RejectCode, Rejected, Transient, classify_rpc_error, raise_classified


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_retryable_codes_are_transient(code: grpc.StatusCode) -> None:
    result = classify_rpc_error(FakeRpcError(code, "connection refused"))
    assert result.transient is True
    assert code.name in result.reason
    assert "connection refused" in result.reason


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    ],
)
def test_request_codes_are_permanent(code: grpc.StatusCode) -> None:
    result = classify_rpc_error(FakeRpcError(code, "bad request"))
    assert result.transient is False
    assert result.reason == f"{code.name}: bad request"


def test_unknown_with_no_such_instance_is_permanent_unknown_instance() -> None:
    error = FakeRpcError(grpc.StatusCode.UNKNOWN, "no such instance exists")
    result = classify_rpc_error(error)
    assert result.transient is False
    assert "unknown instance" in result.reason
    assert "no such instance exists" in result.reason


@pytest.mark.parametrize(
    ("details", "label"),
    [
        ("Instance 'x' Already Exists", "instance already exists"),
        ("orchestration has not yet completed", "instance has not finished"),
        ("instance is not in a terminal state", "instance has not finished"),
        ("No orchestrator named 'foo'", "unknown workflow"),
    ],
)
def test_known_permanent_messages_are_labelled(details: str, label: str) -> None:
    for code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        result = classify_rpc_error(FakeRpcError(code, details))
        assert result.transient is False
        assert result.reason == f"{label}: {details}"


@pytest.mark.parametrize(
    "details", ["connection reset by peer", "", "error reading from server: EOF"]
)
def test_unknown_with_other_text_is_transient(details: str) -> None:
    result = classify_rpc_error(FakeRpcError(grpc.StatusCode.UNKNOWN, details))
    assert result.transient is True
    assert result.reason.startswith("UNKNOWN: ")


def test_error_without_code_uses_its_text_and_is_transient() -> None:
    class Bare(grpc.RpcError):  # type: ignore[misc]
        pass

    result = classify_rpc_error(Bare("socket closed"))
    assert result.transient is True
    assert result.reason == "error: socket closed"


def test_unavailable_is_transient_whatever_its_text() -> None:
    details = (
        "DNS resolution failed for dapr-sidecar:50001: C-ares status is not ARES_SUCCESS "
        "qtype=A name=dapr-sidecar is_balancer=0: Domain name not found"
    )
    result = classify_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, details))
    assert result.transient is True


def test_raise_classified_raises_transient() -> None:
    error = FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")
    with pytest.raises(Transient) as info:
        raise_classified(error, "suspend order-1")
    assert str(info.value) == "suspend order-1: DEADLINE_EXCEEDED: deadline"
    assert info.value.__cause__ is error


def test_raise_classified_raises_rejected() -> None:
    error = FakeRpcError(grpc.StatusCode.UNKNOWN, "no such instance exists")
    with pytest.raises(Rejected) as info:
        raise_classified(error, "suspend order-1")
    assert info.value.reason.startswith("suspend order-1: unknown instance")
    assert info.value.__cause__ is error


def test_a_rejection_names_the_instance_it_is_about() -> None:
    error = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "instance is not running")
    with pytest.raises(Rejected) as info:
        raise_classified(error, "suspend order-1", "order-1")
    assert info.value.instance_id == "order-1"


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (grpc.StatusCode.UNKNOWN, "no such instance exists", RejectCode.UNKNOWN_INSTANCE),
        (grpc.StatusCode.NOT_FOUND, "gone", RejectCode.UNKNOWN_INSTANCE),
        (grpc.StatusCode.UNKNOWN, "Instance 'x' Already Exists", RejectCode.INSTANCE_EXISTS),
        (grpc.StatusCode.ALREADY_EXISTS, "x", RejectCode.INSTANCE_EXISTS),
        (grpc.StatusCode.INTERNAL, "has not yet completed", RejectCode.STATE_FORBIDS),
        (grpc.StatusCode.FAILED_PRECONDITION, "x", RejectCode.STATE_FORBIDS),
        (grpc.StatusCode.UNKNOWN, "no orchestrator named 'x'", RejectCode.UNKNOWN_WORKFLOW),
        (grpc.StatusCode.PERMISSION_DENIED, "x", RejectCode.SIDECAR_REFUSED),
    ],
)
def test_a_rejection_from_the_sidecar_has_a_bounded_code(
    code: grpc.StatusCode, details: str, expected: RejectCode
) -> None:
    with pytest.raises(Rejected) as raised:
        raise_classified(FakeRpcError(code, details), "do it", "order-1")
    assert raised.value.code is expected
    assert details in raised.value.reason  # the text keeps the details; the code is the label


def test_retry_until_done_retries_a_transient_with_backoff_until_it_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outcomes, "FIRST_RETRY_SECONDS", 0.01)
    failures = [Transient("down"), Transient("still down")]
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        if failures:
            raise failures.pop(0)

    assert outcomes.retry_until_done(attempt, threading.Event(), "move it") is True
    assert len(calls) == 3


def test_retry_until_done_gives_up_when_stopping_and_lets_other_errors_through() -> None:
    stopping = threading.Event()
    stopping.set()

    def down() -> None:
        raise Transient("down")

    assert outcomes.retry_until_done(down, stopping, "move it") is False

    def bug() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        outcomes.retry_until_done(bug, threading.Event(), "move it")
