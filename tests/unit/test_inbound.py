"""Turning a delivered CloudEvent's data into a validated message, or a clear rejection."""

from __future__ import annotations

import json

import pytest

from tests.unit.fakes import inbound
from worker.actions import control_adapter
from worker.handlers.inbound import Inbound, parse
from worker.messages import Purge, RaiseEvent, StartWorkflow, Suspend
from worker.outcomes import RejectCode, Rejected

_BODY = {"workflow": "approval_workflow", "instance_id": "order-1"}


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "text/json",
        "text/plain",
        "application/cloudevents+json",
        "application/vnd.acme.order+json",
        "",
    ],
)
def test_json_object_is_accepted(content_type: str) -> None:
    msg = parse(inbound(_BODY, content_type=content_type), StartWorkflow)
    assert isinstance(msg, StartWorkflow)
    assert msg.workflow == "approval_workflow"
    assert msg.instance_id == "order-1"


def test_json_string_holding_an_object_is_accepted() -> None:
    # `dapr publish --data '{"..."}'` with text/plain delivers the JSON as a JSON string.
    data = json.dumps(json.dumps(_BODY)).encode()
    msg = parse(inbound(data, content_type="text/plain"), StartWorkflow)
    assert isinstance(msg, StartWorkflow)
    assert msg.instance_id == "order-1"


def test_type_adapter_models_are_supported() -> None:
    msg = parse(inbound({"action": "suspend", "instance_id": "a"}), control_adapter)
    assert isinstance(msg, Suspend)
    msg = parse(inbound({"action": "purge", "older_than": "90s"}), control_adapter)
    assert isinstance(msg, Purge)


def test_falsy_data_survives_parsing() -> None:
    msg = parse(inbound({"instance_id": "a", "data": False}), RaiseEvent)
    assert isinstance(msg, RaiseEvent)
    assert msg.data is False


def _reason(message: Inbound, model: type[StartWorkflow] = StartWorkflow) -> str:
    with pytest.raises(Rejected) as info:
        parse(message, model)
    assert info.value.code is RejectCode.INVALID_MESSAGE  # every reason parsing gives
    return info.value.reason


def test_non_utf8_is_rejected() -> None:
    reason = _reason(inbound(b'{"workflow": "\xff\xfe"}'))
    assert "not UTF-8" in reason


@pytest.mark.parametrize("data", [b"{not json", b"", b'{"workflow": "w",}', b"\"{'a': 1}\""])
def test_invalid_json_is_rejected(data: bytes) -> None:
    assert "not valid JSON" in _reason(inbound(data))


@pytest.mark.parametrize(
    ("data", "kind"),
    [(b"[1, 2]", "list"), (b'"hello"', "str"), (b"42", "int"), (b"null", "NoneType")],
)
def test_json_that_is_not_an_object_is_rejected(data: bytes, kind: str) -> None:
    reason = _reason(inbound(data))
    assert "must be a JSON object" in reason
    assert kind in reason


@pytest.mark.parametrize(
    "content_type", ["application/xml", "application/octet-stream", "text/html", "image/png"]
)
def test_unsupported_content_type_is_rejected(content_type: str) -> None:
    reason = _reason(inbound(_BODY, content_type=content_type))
    assert "unsupported content type" in reason
    assert content_type in reason
    assert "application/json" in reason


def test_validation_error_names_the_missing_field() -> None:
    reason = _reason(inbound({"instance_id": "order-1"}))
    assert reason.startswith("invalid message: ")
    assert "workflow" in reason
    assert "required" in reason.lower()


def test_validation_error_names_every_bad_field() -> None:
    reason = _reason(inbound({"workflow": "w", "instance_id": "a b", "instanceId": "x"}))
    assert "instance_id:" in reason
    assert "instanceId:" in reason
    assert "; " in reason


def test_validation_error_names_nested_field_path() -> None:
    with pytest.raises(Rejected) as info:
        parse(inbound({"action": "purge", "statuses": ["RUNNING"]}), control_adapter)
    assert "purge.statuses.0" in info.value.reason


def test_model_level_error_is_explained() -> None:
    with pytest.raises(Rejected) as info:
        parse(
            inbound({"action": "purge", "instance_id": "a", "older_than": "1h"}),
            control_adapter,
        )
    assert "either instance_id or the bulk filters" in info.value.reason


def test_describe_names_message_source_and_topic() -> None:
    text = inbound({}, message_id="m-7", source="", topic="workflow.start").describe()
    assert text == "message m-7 from ? on workflow.start"
