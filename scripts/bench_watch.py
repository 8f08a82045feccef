"""The watch (worker/watch): how fast changes made by others reach a consumer, and what it costs.

On the real stack, shared profile (placement, scheduler, Redis, sidecars on free ports):

Timeliness (a fresh stack): the worker with its sidecar, default watch settings, and a consumer
of `workflow.status` (a subscriber app, app-id `workflow-client`, with its own sidecar, reading
one message at a time). For each action, N changes made through a client the worker did not
write (DaprWorkflowClient and the gRPC workflow API on the worker's sidecar), paced; a change's
latency runs from just before the call to the consumer's receipt of the matching `observed`
event. run, suspend, resume, raise-event, terminate and rerun reach the worker at once (hints);
a purge is found by the sweep, so its latency depends on `--sweep-seconds` (default 5, as the
worker's). A retention purge: a second worker app-id whose sidecar has a Configuration with
`workflow.stateRetentionPolicy.anyTerminal`; latency from completion + retention to `purged`.

Cost (another fresh stack): `--finished` instances run to completion and `--running` instances
wait for an event, all started through DaprWorkflowClient; once everything settled, the worker
is left idle under the watch for `--window` seconds. Measured: the sidecar's completed gRPC
server calls per method (daprd's metrics: the calls the worker makes), the worker's CPU seconds
(/proc), the sweep's duration (the worker's DEBUG "watch: swept N instances in X s" lines).
Then a window once the running instances have been idle past the stall threshold (their one
history read), and a baseline window with the watch turned off (what the rest of the worker
costs). Each window's calls are set beside the cost model (`cost_model`).

  .venv/bin/python scripts/bench_watch.py              # N=50; 10,000 + 500 instances (~25 min)
  .venv/bin/python scripts/bench_watch.py --smoke      # a quick check (CI runs it)
Results: OUT/watch.json and OUT/watch.md (default OUT: docs/benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from cloudevents.sdk.event import v1
from dapr.ext.grpc import App
from dapr.ext.workflow import DaprWorkflowClient
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as pb
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2_grpc as stubs

from scripts import devstack
from scripts.benchmark import machine_description, write_report
from worker.watch.watcher import _LIST_PAGE

WORKER_ID = "workflow-worker"
CONSUMER_ID = "workflow-client"  # the shared profile grants it workflow.status
RETENTION_ID = "retention-worker"
STATUS_TOPIC = "workflow.status"
PAGE_SIZE = _LIST_PAGE  # the watch lists instance ids in pages of this many
PARKING_POLLS_PER_SECOND = 1.0  # worker.parking: the parked-message index, read every second
CONCURRENCY = 16
# Who may publish on the protected status topic: the retention worker too (and its own start
# topic, since an app-id with an entry may publish only what its entry lists).
_PUBLISH_GRANT = "workflow.status,workflow.deadletter;workflow-client="
_PUBLISH_GRANT_WIDER = (
    f"workflow.status,workflow.deadletter;{RETENTION_ID}=workflow.status,"
    f"retention.workflow.start;workflow-client="
)
_SWEPT = re.compile(r"watch: swept (\d+) instances in ([0-9.]+)s")
_RPC = re.compile(r"^dapr_grpc_io_server_completed_rpcs\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
_METHOD = re.compile(r'grpc_server_method="([^"]*)"')

# action -> the event a consumer receives for it
ACTIONS = {
    "run": "started",
    "suspend": "suspended",
    "resume": "resumed",
    "raise-event": "event_raised",
    "terminate": "terminated",
    # the same, to never-ending counters the worker started by message
    "suspend ours": "suspended",
    "resume ours": "resumed",
    "terminate ours": "terminated",
    "resume what the worker suspended": "resumed",
    "rerun": "started",
    "purge": "purged",
}


# --- measuring ---------------------------------------------------------------------------------


def summary_ms(latencies: list[float]) -> dict[str, float]:
    """p50, p95 (nearest rank) and max of ``latencies`` (seconds), in ms."""
    if not latencies:
        return {"p50_ms": math.nan, "p95_ms": math.nan, "max_ms": math.nan}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "max_ms": ordered[-1] * 1000}


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def server_calls(metrics_port: int) -> dict[str, int]:
    """Completed gRPC server calls of a sidecar, by method (last path segment), all statuses."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    calls: dict[str, int] = {}
    for line in text.splitlines():
        match = _RPC.match(line)
        if match is None:
            continue
        method = _METHOD.search(match["labels"])
        name = method.group(1).rsplit("/", 1)[-1] if method else "?"
        calls[name] = calls.get(name, 0) + int(float(match["value"]))
    return calls


def redis_commands(port: int) -> dict[str, dict[str, float]]:
    """Redis's own count of calls and CPU time (s) per command (INFO commandstats)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"INFO commandstats\r\n")
        data = b""
        while b"\r\n" not in data or len(data) < _bulk_end(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    stats: dict[str, dict[str, float]] = {}
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_") :].partition(":")
            values = dict(f.split("=", 1) for f in fields.split(",") if "=" in f)
            stats[name] = {"calls": float(values["calls"]), "s": float(values["usec"]) / 1e6}
    return stats


def redis_keys(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"DBSIZE\r\n")
        return int(s.recv(100).strip().lstrip(b":"))


def _bulk_end(data: bytes) -> int:
    """Length of a complete RESP bulk string reply whose start is ``data``."""
    header, _, _ = data.partition(b"\r\n")
    return len(header) + 2 + int(header[1:] or b"0") + 2


def _redis_delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    out = {}
    for name, now in after.items():
        was = before.get(name, {"calls": 0.0, "s": 0.0})
        calls, spent = now["calls"] - was["calls"], now["s"] - was["s"]
        if calls:
            out[name] = {"calls": calls, "cpu_s": round(spent, 3)}
    return dict(sorted(out.items(), key=lambda item: -item[1]["cpu_s"]))


def sweeps_in(log: Path, start: int, end: int) -> list[tuple[int, float]]:
    """(instances listed, seconds) of every sweep the worker logged between two log offsets."""
    with log.open("rb") as f:
        f.seek(start)
        text = f.read(max(0, end - start)).decode(errors="replace")
    return [(int(m.group(1)), float(m.group(2))) for m in _SWEPT.finditer(text)]


# --- the consumer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    t: float  # when the consumer received it (time.time())
    id: str
    event: str
    instance_id: str
    observed: bool
    occurred_at: str


@dataclass
class Consumer:
    """A subscriber of the status topic in this process; its own sidecar (app-id
    workflow-client) delivers one message at a time, as a consumer that needs order reads."""

    app: App = field(default_factory=App)
    sidecar: devstack.Sidecar | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrivals: list[Arrival] = field(default_factory=list)
    first: dict[tuple[str, str], Arrival] = field(default_factory=dict)

    @classmethod
    def start(cls, stack: devstack.Stack) -> Consumer:
        consumer = cls()
        consumer.app.register_health_check(lambda: None)
        consumer.app.subscribe("pubsub", STATUS_TOPIC)(consumer.on_status)
        port = devstack.free_port()
        threading.Thread(target=consumer.app.run, args=(port,), daemon=True).start()
        devstack.wait_until(lambda: devstack.port_open(port), 10, "consumer app")
        consumer.sidecar = stack.start_sidecar(
            CONSUMER_ID,
            devstack.one_at_a_time(stack.components("redis")),
            app_port=port,
            wait_for_app=True,
            name="daprd-consumer",
        )
        return consumer

    def on_status(self, event: v1.Event) -> None:
        received = time.time()
        try:
            raw = event.Data()
            data = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
            arrival = Arrival(
                received,
                str(event.EventID()),
                str(data.get("event")),
                str(data.get("instance_id") or ""),
                bool(data.get("observed")),
                str(data.get("occurred_at") or ""),
            )
        except Exception:  # never fail a delivery: the sidecar would redeliver it for ever
            return
        with self.lock:
            self.arrivals.append(arrival)
            self.first.setdefault((arrival.instance_id, arrival.event), arrival)

    def stop(self) -> None:
        if self.sidecar is not None:
            self.sidecar.proc.stop()
        self.app.stop()

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def wait(
        self, keys: Iterable[tuple[str, str]], timeout: float
    ) -> dict[tuple[str, str], Arrival]:
        """The first arrival of each (instance, event) in ``keys`` that came within
        ``timeout`` seconds (the rest are missing)."""
        wanted = set(keys)
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = {k: self.first[k] for k in wanted if k in self.first}
            if len(found) == len(wanted) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def quiet_for(self, seconds: float, timeout: float) -> bool:
        """Wait until nothing has arrived for ``seconds``."""
        deadline = time.monotonic() + timeout
        last, since = self.count(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.count()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= seconds:
                return True
        return False

    def audit(self, expected: dict[str, dict[str, bool]]) -> dict[str, Any]:
        """Against ``expected`` (instance -> event -> observed?): changes published under
        several CloudEvent ids, expected events missing, events not expected, events with the
        wrong observed flag."""
        ids: dict[tuple[str, str], set[str]] = {}
        flags: dict[tuple[str, str], set[bool]] = {}
        with self.lock:
            arrivals = list(self.arrivals)
        for a in arrivals:
            if a.instance_id in expected:
                ids.setdefault((a.instance_id, a.event), set()).add(a.id)
                flags.setdefault((a.instance_id, a.event), set()).add(a.observed)
        doubled = sorted(f"{i} {e}" for (i, e), got in ids.items() if len(got) > 1)
        missing = sorted(
            f"{i} {e}" for i, events in expected.items() for e in events if (i, e) not in ids
        )
        extra = sorted(f"{i} {e}" for (i, e) in ids if e not in expected[i])
        flagged = sorted(
            f"{i} {e}"
            for (i, e), got in flags.items()
            if e in expected[i] and got != {expected[i][e]}
        )
        return {
            "instances": len(expected),
            "events_expected": sum(len(e) for e in expected.values()),
            "deliveries": sum(1 for a in arrivals if a.instance_id in expected),
            "published_under_several_ids": len(doubled),
            "missing": len(missing),
            "unexpected": len(extra),
            "wrong_observed_flag": len(flagged),
            "examples": {
                "published_under_several_ids": doubled[:10],
                "missing": missing[:10],
                "unexpected": extra[:10],
                "wrong_observed_flag": flagged[:10],
            },
        }


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class Watched:
    """A worker (watch on) with its sidecar, and a client of that sidecar the worker did not
    write."""

    sidecar: devstack.Sidecar
    proc: devstack.Proc
    client: DaprWorkflowClient
    stub: stubs.TaskHubSidecarServiceStub
    channel: grpc.Channel
    env: dict[str, str]
    metrics_port: int | None = None

    def close(self) -> None:
        self.client.close()
        self.channel.close()


def start_watched(
    stack: devstack.Stack,
    app_id: str,
    env: dict[str, str],
    *,
    config: Path = devstack.CONFIG,
    metrics: bool = False,
    topics: str = "",
) -> Watched:
    metrics_port = devstack.free_port() if metrics else None
    sidecar = stack.start_sidecar(
        app_id,
        stack.components("redis"),
        app_port=devstack.free_port(),
        cwd=stack.workdir,
        name=f"daprd-{app_id}",
        config=config,
        metrics_port=metrics_port,
    )
    worker_env = {
        "WORKER_APP_ID": app_id,
        "WORKER_WORKFLOW_MODULES": '["tests.integration.user_workflows"]',
        "PYTHONPATH": str(devstack.PROJECT),
        **(
            {f"WORKER_{t.upper()}_TOPIC": f"{topics}workflow.{t}" for t in ("start", "approval")}
            | {"WORKER_CONTROL_TOPIC": f"{topics}workflow.control"}
            if topics
            else {}
        ),
        **env,
    }
    proc = stack.start_worker(sidecar, name=app_id, env=worker_env)
    channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}")
    return Watched(
        sidecar,
        proc,
        DaprWorkflowClient(host="127.0.0.1", port=str(sidecar.grpc_port)),
        stubs.TaskHubSidecarServiceStub(channel),
        channel,
        worker_env,
        metrics_port,
    )


@contextlib.contextmanager
def fresh_stack(workdir: Path) -> Iterator[devstack.Stack]:
    """Placement, scheduler and Redis; every process's log is printed when a phase fails."""
    with devstack.Stack(workdir) as stack:
        stack.component_patches[_PUBLISH_GRANT] = _PUBLISH_GRANT_WIDER
        pubsub = (devstack.COMPONENTS / "redis" / "pubsub.yaml").read_text()
        if _PUBLISH_GRANT not in pubsub:
            raise RuntimeError("the shared profile's publishing grant to widen has moved")
        try:
            stack.start_placement()
            stack.start_scheduler()
            stack.start_redis()
            yield stack
        except BaseException:
            print(stack.failed_logs(), file=sys.stderr)
            raise


def watch_env(args: argparse.Namespace, log_level: str) -> dict[str, str]:
    return {
        "WORKER_WATCH_SWEEP_SECONDS": str(args.sweep_seconds),
        "WORKER_WATCH_RECHECK_SECONDS": str(args.recheck_seconds),
        "WORKER_STALL_SECONDS": str(args.stall_seconds),
        "WORKER_LOG_LEVEL": log_level,
    }


def _paced(items: list[str], interval: float, call: Callable[[str], object]) -> dict[str, float]:
    """``call(item)`` for each item, one every ``interval`` seconds; item -> wall time just
    before its call."""
    sent: dict[str, float] = {}
    began = time.monotonic()
    for i, item in enumerate(items):
        delay = began + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent[item] = time.time()
        call(item)
    return sent


def _parallel(items: Iterable[Any], fn: Callable[[Any], Any]) -> list[Any]:
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(fn, items))


def _publish(http_port: int, topic: str, data: Any) -> None:
    body = json.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "bench-watch",
            "type": "bench",
            "datacontenttype": "application/json",
            "data": data,
        }
    ).encode()
    status = devstack.publish(http_port, topic, body, "application/cloudevents+json", timeout=30)
    if status != 204:
        raise RuntimeError(f"publish to {topic}: HTTP {status}")


# --- timeliness --------------------------------------------------------------------------------


def _latencies(
    consumer: Consumer,
    sent: dict[str, float],
    event: str,
    timeout: float,
    after: Callable[[str], float] | None = None,
) -> dict[str, Any]:
    """Wait for ``event`` of every instance in ``sent``; latency from ``after(id)`` (default:
    the call's time) to the first arrival."""
    found = consumer.wait(((i, event) for i in sent), timeout)
    samples = [
        found[(i, event)].t - (after(i) if after else t)
        for i, t in sent.items()
        if (i, event) in found
    ]
    not_observed = sum(1 for i in sent if (i, event) in found and not found[(i, event)].observed)
    return {
        "count": len(sent),
        "received": len(samples),
        "missing": len(sent) - len(samples),
        "not_observed": not_observed,
        **summary_ms(samples),
        "samples_ms": [round(s * 1000, 1) for s in samples],
    }


def _show(what: str, r: dict[str, Any]) -> None:
    print(
        f"  {what:12} {r['received']}/{r['count']}: p50 {_f(r['p50_ms'])} ms, "
        f"p95 {_f(r['p95_ms'])} ms, max {_f(r['max_ms'])} ms",
        flush=True,
    )


def timeliness(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    n, gap, hint_timeout = args.n, args.interval, args.timeout
    sweep_timeout = args.sweep_seconds * 2 + args.timeout / 2  # found by a sweep
    tag = uuid.uuid4().hex[:6]
    with fresh_stack(workdir) as stack:
        consumer = Consumer.start(stack)
        worker = start_watched(stack, WORKER_ID, watch_env(args, "INFO"))
        client = worker.client
        results: dict[str, Any] = {}
        expected: dict[str, dict[str, bool]] = {}
        try:

            def expect(ids: Iterable[str], events: dict[str, bool]) -> None:
                """These instances' events, each with the `observed` flag it should have."""
                for i in ids:
                    expected.setdefault(i, {}).update(events)

            def act(action: str, sent: dict[str, float]) -> None:
                timeout = sweep_timeout if action == "purge" else hint_timeout
                results[action] = _latencies(consumer, sent, ACTIONS[action], timeout)
                _show(action, results[action])

            def start_counters(ids: list[str]) -> None:
                """Never-ending counters (continue-as-new every second), each started by a
                `workflow.start` message: the worker's own instances."""
                assert consumer.sidecar is not None
                body = {"workflow": "counter_workflow", "input": {"interval_seconds": 1}}
                for i in ids:
                    _publish(
                        consumer.sidecar.http_port, "workflow.start", {**body, "instance_id": i}
                    )
                consumer.wait(((i, "started") for i in ids), hint_timeout)

            def start_waiting(i: str) -> object:
                return client.schedule_new_workflow("waiting_workflow", input=None, instance_id=i)

            waiting = [f"wait-{tag}-{k}" for k in range(n)]
            ending = [f"end-{tag}-{k}" for k in range(n)]
            expect(
                waiting,
                {
                    "started": True,
                    "suspended": True,
                    "resumed": True,
                    "event_raised": True,
                    "completed": False,
                },
            )
            expect(ending, {"started": True, "terminated": True, "purged": True})
            run = _paced(waiting, gap, start_waiting)
            act("run", run)
            act("suspend", _paced(waiting, gap, client.pause_workflow))
            act("resume", _paced(waiting, gap, client.resume_workflow))
            act(
                "raise-event",
                _paced(waiting, gap, lambda i: client.raise_workflow_event(i, "go", data={"k": i})),
            )
            more = _paced(ending, gap, start_waiting)
            act("run", {**run, **more})  # both sets: 2N starts
            act("terminate", _paced(ending, gap, client.terminate_workflow))
            # Operators' changes to the worker's own instances, also after continue-as-new
            # (a generation a second), and a resume of what the worker suspended by message.
            ours = [f"ours-{tag}-{k}" for k in range(n)]
            expect(ours, {"started": False, "suspended": True, "resumed": True, "terminated": True})
            start_counters(ours)
            act("suspend ours", _paced(ours, gap, client.pause_workflow))
            act("resume ours", _paced(ours, gap, client.resume_workflow))
            act("terminate ours", _paced(ours, gap, client.terminate_workflow))
            mixed = [f"mixed-{tag}-{k}" for k in range(n)]
            expect(
                mixed, {"started": False, "suspended": False, "resumed": True, "terminated": True}
            )
            start_counters(mixed)
            assert consumer.sidecar is not None
            for i in mixed:
                _publish(
                    consumer.sidecar.http_port,
                    "workflow.control",
                    {"action": "suspend", "instance_id": i},
                )
            consumer.wait(((i, "suspended") for i in mixed), hint_timeout)
            act("resume what the worker suspended", _paced(mixed, gap, client.resume_workflow))
            _paced(mixed, 0, client.terminate_workflow)
            results["rerun"] = rerun(worker, consumer, n, gap, tag, sweep_timeout, expect)
            _show("rerun", results["rerun"])
            act("purge", _paced(ending, gap, client.purge_workflow))
            retention: dict[str, Any] = {}
            if args.retention_n:
                retention = retention_purges(stack, args, consumer, tag, expect)
            everything = [(i, e) for i, events in expected.items() for e in events]
            consumer.wait(everything, args.sweep_seconds * 2 + 2)
            consumer.quiet_for(3, 30)  # late duplicates, too
            audit = consumer.audit(expected)
        finally:
            worker.close()
            consumer.stop()
    return {
        "n": n,
        "interval_s": gap,
        "sweep_seconds": args.sweep_seconds,
        "actions": results,
        "retention": retention,
        "audit": audit,
    }


def rerun(
    worker: Watched,
    consumer: Consumer,
    n: int,
    gap: float,
    tag: str,
    timeout: float,
    expect: Callable[..., None],
) -> dict[str, Any]:
    """Finished instances with an activity, each rerun from that activity into a new id."""
    sources = [f"src-{tag}-{k}" for k in range(n)]
    copies = {s: s.replace("src-", "copy-", 1) for s in sources}
    expect(sources, {"started": True, "completed": False})
    expect(copies.values(), {"started": True, "completed": False})
    for s in sources:
        worker.client.schedule_new_workflow("slow_workflow", input=0.01, instance_id=s)
    done = consumer.wait(((s, "completed") for s in sources), timeout)
    ready = [s for s in sources if (s, "completed") in done]

    def step(source: str) -> int:
        history = worker.stub.GetInstanceHistory(
            pb.GetInstanceHistoryRequest(instanceId=source), timeout=10
        )
        return int(
            next(e.eventId for e in history.events if e.WhichOneof("eventType") == "taskScheduled")
        )

    steps = {s: step(s) for s in ready}

    def again(source: str) -> object:
        request = pb.RerunWorkflowFromEventRequest(
            sourceInstanceID=source, eventID=steps[source], newInstanceID=copies[source]
        )
        return worker.stub.RerunWorkflowFromEvent(request, timeout=10)

    sent = _paced(ready, gap, again)
    result = _latencies(consumer, {copies[s]: t for s, t in sent.items()}, "started", timeout)
    result["count"] = n
    result["missing"] = n - result["received"]
    consumer.wait(((copies[s], "completed") for s in ready), timeout)
    return result


def _retention_config(stack: devstack.Stack, seconds: float) -> Path:
    """The project's sidecar configuration plus daprd's own purge of finished instances."""
    text = devstack.CONFIG.read_text().rstrip() + (
        f"\n  workflow:\n    stateRetentionPolicy:\n      anyTerminal: {seconds:g}s\n"
    )
    path = stack.workdir / "retention-config.yaml"
    path.write_text(text)
    return path


def retention_purges(
    stack: devstack.Stack,
    args: argparse.Namespace,
    consumer: Consumer,
    tag: str,
    expect: Callable[..., None],
) -> dict[str, Any]:
    """Finished instances that daprd purges by itself: started through a client (the watch
    hears of them at once) and through the worker's start topic (only the sweep lists them)."""
    n, keep = args.retention_n, args.retention_seconds
    worker = start_watched(
        stack,
        RETENTION_ID,
        watch_env(args, "INFO"),
        config=_retention_config(stack, keep),
        topics="retention.",
    )
    try:
        by_client = [f"kept-{tag}-{k}" for k in range(n)]
        by_worker = [f"keptw-{tag}-{k}" for k in range(n)]
        expect(by_client, {"started": True, "completed": False, "purged": True})
        expect(by_worker, {"started": False, "completed": False, "purged": True})
        _paced(
            by_client,
            args.interval,
            lambda i: worker.client.schedule_new_workflow(
                "greeting_workflow", input="r", instance_id=i
            ),
        )
        _paced(
            by_worker,
            args.interval,
            lambda i: _publish(
                worker.sidecar.http_port,
                "retention.workflow.start",
                {"workflow": "greeting_workflow", "instance_id": i, "input": "r"},
            ),
        )
        ids = by_client + by_worker
        timeout = keep + args.sweep_seconds * 2 + args.timeout / 2
        completed = consumer.wait(((i, "completed") for i in ids), timeout)

        def ended(i: str) -> float:  # the completion's stamp plus the retention time
            stamp = completed[(i, "completed")].occurred_at
            return float(datetime.fromisoformat(stamp).timestamp()) + float(keep)

        out: dict[str, Any] = {"retention_seconds": keep}
        for name, group in (("started_by_client", by_client), ("started_by_worker", by_worker)):
            done = {i: 0.0 for i in group if (i, "completed") in completed}
            out[name] = _latencies(consumer, done, "purged", timeout, after=ended)
            out[name]["count"] = len(group)
            out[name]["missing"] = len(group) - out[name]["received"]
            _show(f"retention purge, {name}", out[name])
        return out
    finally:
        worker.close()
        worker.proc.stop()
        worker.sidecar.proc.stop()


# --- cost --------------------------------------------------------------------------------------


def cost_model(
    total: int, running: int, seconds: float, sweeps: int, recheck: float, history: int = 0
) -> dict[str, float]:
    """Calls the watch should make in ``seconds`` with ``sweeps`` sweeps over ``total``
    instances of which ``running`` are unfinished, by method:
    - each sweep: the lease (one read, one write) and ceil(total/PAGE_SIZE) ListInstanceIDs pages;
    - each unfinished instance every ``recheck`` seconds: its state (GetInstance) and what the
      feed last accounted for (GetState);
    - a running instance idle past the stall threshold: its history, once (``history``);
    - nothing per finished instance, nothing published while nothing changes.
    Not the watch: the parking lot reads its index every second (GetState)."""
    rechecks = running * seconds / recheck
    return {
        "ListInstanceIDs": sweeps * max(1, math.ceil(total / PAGE_SIZE)),
        "GetInstance": rechecks,
        "GetState": sweeps + rechecks + seconds * PARKING_POLLS_PER_SECOND,
        "SaveState": sweeps,
        "GetInstanceHistory": history,
        "PublishEvent": 0,
        "DeleteState": 0,
    }


def measure_window(
    worker: Watched,
    stack: devstack.Stack,
    consumer: Consumer,
    seconds: float,
    name: str,
    sample_every: float = 10.0,
) -> dict[str, Any]:
    """Calls, CPU and sweeps over ``seconds`` of an idle worker."""
    assert worker.metrics_port is not None
    redis = next(p for p in stack.procs if p.name == "redis")
    pids = {
        "worker": worker.proc.popen.pid,
        "sidecar": worker.sidecar.proc.popen.pid,
        "redis": redis.popen.pid,
    }
    print(f"  window {name}: {seconds:.0f} s", flush=True)
    log_start = worker.proc.log.stat().st_size
    redis0 = redis_commands(stack.redis_port)
    calls0, cpu0 = (
        server_calls(worker.metrics_port),
        {k: devstack.cpu_seconds(p) for k, p in pids.items()},
    )
    events0, ticks0, began = consumer.count(), machine_ticks(), time.monotonic()
    series: list[dict[str, Any]] = []
    while (elapsed := time.monotonic() - began) < seconds:
        time.sleep(min(sample_every, seconds - elapsed))
        series.append(
            {
                "t": round(time.monotonic() - began, 1),
                "calls": server_calls(worker.metrics_port),
                "worker_cpu_s": round(devstack.cpu_seconds(pids["worker"]) - cpu0["worker"], 3),
            }
        )
    wall = time.monotonic() - began
    calls1, cpu1 = (
        server_calls(worker.metrics_port),
        {k: devstack.cpu_seconds(p) for k, p in pids.items()},
    )
    ticks1, redis1 = machine_ticks(), redis_commands(stack.redis_port)
    swept = sweeps_in(worker.proc.log, log_start, worker.proc.log.stat().st_size)
    delta = {m: calls1.get(m, 0) - calls0.get(m, 0) for m in sorted(set(calls0) | set(calls1))}
    delta = {m: c for m, c in delta.items() if c}
    durations = [s for _, s in swept]
    return {
        "seconds": round(wall, 1),
        "calls": delta,
        "calls_per_minute": {m: round(c * 60 / wall, 1) for m, c in delta.items()},
        "total_calls_per_minute": round(sum(delta.values()) * 60 / wall, 1),
        "cpu_s": {k: round(cpu1[k] - cpu0[k], 2) for k in pids},
        "worker_cpu_percent": round(100 * (cpu1["worker"] - cpu0["worker"]) / wall, 2),
        # How busy the whole machine was (all cores): other work running beside the stack.
        "machine_busy_percent": round(
            100 * (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1]), 1
        ),
        "sweeps": len(swept),
        "listed": swept[-1][0] if swept else None,
        "sweep_s": {
            "median": round(statistics.median(durations), 3) if durations else None,
            "max": round(max(durations), 3) if durations else None,
            "all": durations,
        },
        "status_events_received": consumer.count() - events0,
        "redis_commands": _redis_delta(redis0, redis1),
        "series": series,
    }


def _compare(window: dict[str, Any], model: dict[str, float]) -> dict[str, dict[str, float]]:
    per_minute = 60 / window["seconds"]
    methods = sorted(set(model) | set(window["calls"]))
    return {
        m: {
            "measured": window["calls"].get(m, 0),
            "model": round(model.get(m, 0), 1),
            "measured_per_minute": round(window["calls"].get(m, 0) * per_minute, 1),
            "model_per_minute": round(model.get(m, 0) * per_minute, 1),
        }
        for m in methods
    }


def changes_under_load(
    args: argparse.Namespace,
    worker: Watched,
    consumer: Consumer,
    finished: list[str],
    running: list[str],
    expected: dict[str, dict[str, bool]],
) -> dict[str, Any]:
    """The timeliness of a hinted change (suspend) and of a purge, with all the instances
    in place (the sweep takes longer: a purge waits for the interval plus the sweep)."""
    out: dict[str, Any] = {}
    suspend, purge = running[: args.n], finished[: args.n]
    for i in suspend:
        expected[i]["suspended"] = True
    for i in purge:
        expected[i]["purged"] = True
    sent = _paced(suspend, args.interval, worker.client.pause_workflow)
    out["suspend"] = _latencies(consumer, sent, "suspended", args.timeout)
    _show("suspend (under load)", out["suspend"])
    sent = _paced(purge, args.interval, worker.client.purge_workflow)
    out["purge"] = _latencies(consumer, sent, "purged", args.sweep_seconds * 4 + args.timeout)
    _show("purge (under load)", out["purge"])
    return out


def listing_probe(worker: Watched, redis_port: int) -> list[dict[str, Any]]:
    """One complete ListInstanceIDs listing per page size, with the watch off: its time and
    what it costs Redis (daprd 1.18.2 scans the whole key space for every page)."""
    out = []
    for size in sorted({500, 2000, PAGE_SIZE, 20_000}):  # the old page, the watch's, others
        before, began = redis_commands(redis_port), time.monotonic()
        token, pages, ids = "", 0, 0
        while True:
            request = pb.ListInstanceIDsRequest(pageSize=size)
            if token:
                request.continuationToken = token
            page = worker.stub.ListInstanceIDs(request, timeout=120)
            pages, ids = pages + 1, ids + len(page.instanceIds)
            token = page.continuationToken if page.HasField("continuationToken") else ""
            if not token:
                break
        seconds = time.monotonic() - began
        redis = _redis_delta(before, redis_commands(redis_port))
        scan = redis.get("scan", {"calls": 0.0, "cpu_s": 0.0})
        out.append(
            {
                "redis_keys": redis_keys(redis_port),
                "page_size": size,
                "pages": pages,
                "ids": ids,
                "seconds": round(seconds, 3),
                "redis_scan_calls": scan["calls"],
                "redis_scan_cpu_s": scan["cpu_s"],
            }
        )
        print(f"  listing, page size {size}: {out[-1]}", flush=True)
    return out


def cost(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    finished, running = args.finished, args.running
    total = finished + running
    with fresh_stack(workdir) as stack:
        consumer = Consumer.start(stack)
        worker = start_watched(stack, WORKER_ID, watch_env(args, "DEBUG"), metrics=True)
        try:
            done_ids = [f"done-{k:05d}" for k in range(finished)]
            wait_ids = [f"idle-{k:04d}" for k in range(running)]
            began = time.monotonic()
            _parallel(
                done_ids,
                lambda i: worker.client.schedule_new_workflow(
                    "greeting_workflow", input=i, instance_id=i
                ),
            )
            _parallel(
                wait_ids,
                lambda i: worker.client.schedule_new_workflow(
                    "waiting_workflow", input=None, instance_id=i
                ),
            )
            running_since = time.time()
            created = time.monotonic() - began
            print(f"  created {finished} + {running} instances in {created:.0f} s", flush=True)
            expected = {i: {"started": True, "completed": False} for i in done_ids}
            expected.update({i: {"started": True} for i in wait_ids})
            keys = [(i, e) for i, events in expected.items() for e in events]
            settle = max(300.0, total * 0.2)
            arrived = consumer.wait(keys, settle)
            settled_in = time.monotonic() - began
            print(
                f"  {len(arrived)} of {len(keys)} status events in {settled_in:.0f} s",
                flush=True,
            )
            consumer.quiet_for(3 if args.smoke else 10, 300)
            # The instances first hinted while running are re-checked once by the next sweeps.
            time.sleep(args.sweep_seconds * 2 + 1)
            windows: dict[str, Any] = {}
            steady = measure_window(worker, stack, consumer, args.window, "steady")
            steady["model"] = _compare(
                steady,
                cost_model(
                    total, running, steady["seconds"], steady["sweeps"], args.recheck_seconds
                ),
            )
            windows["steady"] = steady
            if args.late_window:
                # Idle past the stall threshold: each running instance's history is read once.
                wait = running_since + args.stall_seconds + 5 - time.time()
                if wait > 0:
                    print(f"  waiting {wait:.0f} s for the stall threshold", flush=True)
                    time.sleep(wait)
                late = measure_window(worker, stack, consumer, args.late_window, "late")
                late["model"] = _compare(
                    late,
                    cost_model(
                        total,
                        running,
                        late["seconds"],
                        late["sweeps"],
                        args.recheck_seconds,
                        history=running,
                    ),
                )
                windows["late"] = late
            under_load = changes_under_load(args, worker, consumer, done_ids, wait_ids, expected)
            listing: list[dict[str, Any]] = []
            if args.baseline_window:
                worker.proc.stop()
                env = {**worker.env, "WORKER_WATCH_ENABLED": "false"}
                worker.proc = stack.start_worker(worker.sidecar, name="worker-no-watch", env=env)
                time.sleep(3)
                windows["baseline"] = measure_window(
                    worker, stack, consumer, args.baseline_window, "baseline (watch off)"
                )
                listing = listing_probe(worker, stack.redis_port)
            audit = consumer.audit(expected)
        finally:
            worker.close()
            consumer.stop()
    return {
        "finished": finished,
        "running": running,
        "sweep_seconds": args.sweep_seconds,
        "recheck_seconds": args.recheck_seconds,
        "stall_seconds": args.stall_seconds,
        "created_s": round(created, 1),
        "settled_s": round(settled_in, 1),
        "windows": windows,
        "under_load": under_load,
        "listing": listing,
        "audit": audit,
    }


# --- the report --------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Machine: {report['machine']}. Command: `{report['command']}`. "
        f"Commit: {report.get('commit', 'unknown')}.",
        "",
    ]
    t = report.get("timeliness")
    if t:
        lines += [
            f"**Timeliness**: {t['n']} instances per action (run: both sets, {2 * t['n']}), "
            f"one call every {t['interval_s']:g} s, through DaprWorkflowClient / the gRPC "
            f"workflow API on the worker's sidecar; from just before the call to the "
            f"consumer's receipt of the `observed` event. Sweep every {t['sweep_seconds']:g} s.",
            "",
            "| action | event | received | p50 ms | p95 ms | max ms |",
            "|---|---|---|---|---|---|",
        ]
        for action, event in ACTIONS.items():
            r = t["actions"].get(action)
            if r:
                lines.append(
                    f"| {action} | `{event}` | {r['received']}/{r['count']} | "
                    f"{_f(r['p50_ms'])} | {_f(r['p95_ms'])} | {_f(r['max_ms'])} |"
                )
        ret = t.get("retention")
        if ret:
            for name in ("started_by_client", "started_by_worker"):
                r = ret[name]
                lines.append(
                    f"| retention purge ({name.replace('_', ' ')}; from completion + "
                    f"{ret['retention_seconds']:g} s) | `purged` | {r['received']}/{r['count']} | "
                    f"{_f(r['p50_ms'])} | {_f(r['p95_ms'])} | {_f(r['max_ms'])} |"
                )
        a = t["audit"]
        lines += [
            "",
            f"Audit of the {a['instances']} instances: {a['events_expected']} events expected, "
            f"{a['missing']} missing, {a['published_under_several_ids']} changes published "
            f"under several ids, {a['unexpected']} unexpected, {a['wrong_observed_flag']} with "
            "the wrong `observed` flag.",
            "",
        ]
    c = report.get("cost")
    if c:
        total = c["finished"] + c["running"]
        lines += [
            f"**Cost**: {c['finished']} finished + {c['running']} running (waiting for an "
            f"event) instances, = {total}; created in {c['created_s']:.0f} s, all status events "
            f"in {c['settled_s']:.0f} s. Sweep every {c['sweep_seconds']:g} s, re-check every "
            f"{c['recheck_seconds']:g} s, stall threshold {c['stall_seconds']:g} s. "
            "Sidecar calls = completed gRPC server calls of the worker's sidecar (daprd metrics).",
            "",
            "| window | s | sidecar calls/min | worker CPU s (%) | sidecar CPU s | "
            "Redis CPU s (SCAN) | sweeps | sweep median / max s | status events | "
            "machine busy % |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, w in c["windows"].items():
            lines.append(
                f"| {name} | {w['seconds']:.0f} | {w['total_calls_per_minute']:.0f} | "
                f"{w['cpu_s']['worker']:.1f} ({w['worker_cpu_percent']:.1f} %) | "
                f"{w['cpu_s']['sidecar']:.1f} | {w['cpu_s']['redis']:.1f} "
                f"({w['redis_commands'].get('scan', {}).get('cpu_s', 0.0):.1f}) | {w['sweeps']} | "
                f"{_f(w['sweep_s']['median'], 3)} / {_f(w['sweep_s']['max'], 3)} | "
                f"{w['status_events_received']} | {w['machine_busy_percent']:.0f} |"
            )
        names = list(c["windows"])
        methods = sorted({m for w in c["windows"].values() for m in w["calls"]})
        lines += [
            "",
            "Calls per minute by method, measured (model):",
            "",
            "| method | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for m in methods:
            cells = []
            for name in names:
                w = c["windows"][name]
                cell = _f(w["calls_per_minute"].get(m, 0.0))
                if "model" in w and m in w["model"]:
                    cell += f" ({_f(w['model'][m]['model_per_minute'])})"
                cells.append(cell)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Changes with all {total} instances in place (after the windows):",
            "",
            "| action | event | received | p50 ms | p95 ms | max ms |",
            "|---|---|---|---|---|---|",
        ]
        for action, r in c["under_load"].items():
            lines.append(
                f"| {action} | `{ACTIONS[action]}` | {r['received']}/{r['count']} | "
                f"{_f(r['p50_ms'])} | {_f(r['p95_ms'])} | {_f(r['max_ms'])} |"
            )
        if c["listing"]:
            lines += [
                "",
                f"One complete listing of the instance ids (watch off; Redis holds "
                f"{c['listing'][0]['redis_keys']} keys):",
                "",
                "| page size | pages | s | Redis SCAN calls | Redis SCAN CPU s |",
                "|---|---|---|---|---|",
            ]
            for r in c["listing"]:
                lines.append(
                    f"| {r['page_size']} | {r['pages']} | {r['seconds']:.2f} | "
                    f"{r['redis_scan_calls']:.0f} | {r['redis_scan_cpu_s']:.2f} |"
                )
        a = c["audit"]
        lines += [
            "",
            f"Audit: {a['events_expected']} events expected, {a['missing']} missing, "
            f"{a['published_under_several_ids']} changes published under several ids, "
            f"{a['unexpected']} unexpected.",
        ]
    return "\n".join(lines) + "\n"


def _commit() -> str:
    """The commit measured, and whether the worker's code differed from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=devstack.PROJECT,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "worker"],
            capture_output=True,
            text=True,
            check=True,
            cwd=devstack.PROJECT,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (worker/ with uncommitted changes)" if dirty else head


def build_parser() -> argparse.ArgumentParser:
    """The command line this script takes (the docs' examples are checked against it)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=50, help="instances per action")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between calls")
    parser.add_argument("--retention-n", type=int, default=50, help="0: no retention purges")
    parser.add_argument("--retention-seconds", type=float, default=1.0)
    parser.add_argument("--finished", type=int, default=10_000)
    parser.add_argument("--running", type=int, default=500)
    parser.add_argument("--window", type=float, default=120.0, help="idle window, seconds")
    parser.add_argument(
        "--late-window", type=float, default=120.0, help="window past the stall threshold; 0: none"
    )
    parser.add_argument(
        "--baseline-window", type=float, default=60.0, help="window with the watch off; 0: none"
    )
    parser.add_argument("--sweep-seconds", type=float, default=5.0)
    parser.add_argument("--recheck-seconds", type=float, default=60.0)
    parser.add_argument("--stall-seconds", type=float, default=300.0)
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="wait this long for an event (seconds)"
    )
    parser.add_argument("--skip-timeliness", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="3 per action, 30 + 5 instances, 8 s window, sweep every 2 s (< 1.5 min)",
    )
    parser.add_argument("--out", type=Path, default=devstack.PROJECT / "docs" / "benchmark")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.n, args.retention_n, args.interval = 3, 2, 0.1
        args.finished, args.running = 30, 5
        args.window, args.late_window, args.baseline_window = 8.0, 0.0, 4.0
        args.sweep_seconds, args.timeout = 2.0, 10.0
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/bench_watch.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    report: dict[str, Any] = {
        "machine": machine_description(),
        "command": command,
        "commit": _commit(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        if not args.skip_timeliness:
            print("timeliness", flush=True)
            report["timeliness"] = timeliness(args, Path(tmp) / "timeliness")
        if not args.skip_cost:
            print("cost", flush=True)
            report["cost"] = cost(args, Path(tmp) / "cost")
    write_report(args.out / "watch", report, markdown(report))
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda info: None  # quiet pool threads at interpreter exit
    sys.exit(main())
