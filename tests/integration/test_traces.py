"""Traces end to end, read back from a real trace backend (Zipkin's server, started here).

A start is published through a sidecar whose own tracing is on (app-id workflow-client);
the worker (its sidecar traced too, its spans exported by OpenTelemetry's SDK, configured
only by the standard OTEL_* variables) starts a quick workflow, which completes. Zipkin then
holds ONE trace with the publishing sidecar's span, the worker's handling span under it, the
start call under that (and the sidecar's workflow spans under the start), and the publish of
`started` and of `completed`, the latter done later by the workflow's report activity. The
status events the observer received carry that trace in their `traceparent` extension.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from scripts import devstack
from tests.integration.conftest import Observer, Worker, private_worker, unique

SCOPE = "dapr-workflow-worker"  # the worker's instrumentation scope (worker.traces)
STATUS = "trace.workflow.status"


@pytest.fixture(scope="module")
def zipkin(stack: devstack.Stack) -> Iterator[int]:
    proc = stack.start_zipkin()
    yield proc.ports["http"]
    proc.stop()


@pytest.fixture(scope="module")
def traced_worker(stack: devstack.Stack, zipkin: int, observer: Observer) -> Iterator[Worker]:
    config = devstack.traced_config(stack.workdir / "config-traced.yaml", zipkin)
    env = {
        "OTEL_TRACES_EXPORTER": "zipkin",
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT": f"http://127.0.0.1:{zipkin}/api/v2/spans",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: export soon, the test waits for it
    }
    with private_worker(stack, "trace", env=env, config=config) as running:
        yield running


def _trace(port: int, trace_id: str) -> list[dict[str, Any]]:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/v2/trace/{trace_id}", timeout=5
        ) as response:
            spans: list[dict[str, Any]] = json.load(response)
            return spans
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return []
        raise


def _ours(span: dict[str, Any]) -> bool:
    return bool(span.get("tags", {}).get("otel.scope.name") == SCOPE)


def _one(spans: list[dict[str, Any]], what: str, **match: str) -> dict[str, Any]:
    found = [s for s in spans if all(s.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{what}: {len(found)} spans match {match}"
    return found[0]


def _published(spans: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [
        s
        for s in spans
        if _ours(s)
        and s.get("name") == f"publish {STATUS}"
        and str(s.get("tags", {}).get("cloudevents.event_type", "")).endswith(f".{event}")
    ]


def _complete(spans: list[dict[str, Any]]) -> bool:
    """Every span the test checks has arrived (the exporters send in batches)."""
    ours = [s for s in spans if _ours(s)]
    starts = {s["id"] for s in ours if s.get("name") == "workflow start"}
    return (
        any(s.get("localEndpoint", {}).get("serviceName") == "workflow-client" for s in spans)
        and any(s.get("name") == "process trace.workflow.start" for s in ours)
        and bool(starts)
        and any(  # the engine's span of this start (daprd's batches come last)
            s.get("parentId") in starts and not _ours(s) and "greeting_workflow" in s["name"]
            for s in spans
        )
        and bool(_published(spans, "started"))
        and bool(_published(spans, "completed"))
    )


def test_one_trace_from_the_publisher_to_the_completed_event(
    stack: devstack.Stack, zipkin: int, traced_worker: Worker, observer: Observer
) -> None:
    config = stack.workdir / "config-traced.yaml"  # written by traced_worker
    publisher = stack.start_sidecar(
        "workflow-client",
        stack.components("redis"),
        app_port=devstack.free_port(),
        name="daprd-trace-publisher",
        config=config,
    )
    try:
        instance_id = unique("traced")
        message_id = observer.publish(
            traced_worker.topic("workflow.start"),
            {"workflow": "greeting_workflow", "instance_id": instance_id, "input": "trace"},
            via=publisher.http_port,
        )
        events = observer.wait_for(
            "started and completed",
            lambda: [
                e
                for e in observer.for_instance(instance_id, STATUS)
                if e.data["event"] in ("started", "completed")
            ],
            count=2,
        )
    finally:
        publisher.proc.stop()

    # The status events carry the trace: one trace id, each its own publish span as parent.
    parents = {e.data["event"]: str(e.extensions.get("traceparent", "")) for e in events}
    assert all(p.startswith("00-") for p in parents.values()), parents
    trace_ids = {p.split("-")[1] for p in parents.values()}
    assert len(trace_ids) == 1, f"the events are in different traces: {parents}"
    trace_id = trace_ids.pop()

    deadline = time.monotonic() + 60
    spans = _trace(zipkin, trace_id)
    while not _complete(spans) and time.monotonic() < deadline:
        time.sleep(0.5)
        spans = _trace(zipkin, trace_id)
    summary = sorted(
        f"{s.get('localEndpoint', {}).get('serviceName')}: {s.get('name')} "
        f"({s.get('kind', '-')}, id {s.get('id')}, parent {s.get('parentId', '-')})"
        for s in spans
    )
    assert _complete(spans), "trace incomplete after 60 s:\n" + "\n".join(summary)
    by_id = {s["id"]: s for s in spans}

    # The worker's handling span continues the publishing sidecar's span.
    process = _one(
        [s for s in spans if _ours(s)], "handling span", name="process trace.workflow.start"
    )
    assert process["kind"] == "CONSUMER"
    assert process["tags"]["messaging.message.id"] == message_id
    assert process["tags"]["workflow.instance_id"] == instance_id
    sidecar_publish = by_id[process["parentId"]]
    assert sidecar_publish["localEndpoint"]["serviceName"] == "workflow-client", summary

    # Its start call is a child, and carries the trace into the workflow engine: the worker's
    # sidecar's own spans hang under it.
    start = _one([s for s in spans if _ours(s)], "start call", name="workflow start")
    assert (start["kind"], start["parentId"]) == ("CLIENT", process["id"])
    assert start["tags"]["workflow.instance_id"] == instance_id
    under_start = [s for s in spans if s.get("parentId") == start["id"] and not _ours(s)]
    names = {s["name"] for s in under_start}
    assert "/taskhubsidecarservice/startinstance" in names, summary  # from the gRPC metadata
    engine = [s for s in under_start if "greeting_workflow" in s["name"]]  # parentTraceContext
    assert engine, summary
    # ... and the workflow's run (daprd's orchestration span) under that.
    assert any(s.get("parentId") in {e["id"] for e in engine} for s in spans), summary

    # `started` (published by the handling) and `completed` (published later by the
    # workflow's report activity) are PRODUCER spans of the handling; each event's
    # traceparent names its publish span.
    for event in ("started", "completed"):
        published = _published(spans, event)
        assert {s["parentId"] for s in published} == {process["id"]}, (event, summary)
        assert all(s["kind"] == "PRODUCER" for s in published)
        span_id = parents[event].split("-")[2]
        assert span_id in {s["id"] for s in published}, (event, parents[event], summary)
