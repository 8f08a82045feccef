"""What the worker costs compared with calling Dapr directly, on the real stack.

For each profile (embedded default, Redis; postgres-kafka and postgres-rabbitmq when asked with
--profiles), each N and each run, on a fresh stack:
  direct    N starts through DaprWorkflowClient, CONCURRENCY at a time (the sidecar's limit)
  worker    N start messages published to workflow.start, until every `started` event arrived
  flow      N approvals for those instances, until every `completed` event arrived
  pubsub    N messages to a no-op subscriber: the sidecar's own pub/sub round trip
Reported: throughput, latency p50/p95/p99 (publish to event; for direct, the call), the
worker's CPU time and peak RSS, and worker/direct measured in the same run. Medians over runs.

  .venv/bin/python scripts/benchmark.py                    # full: N = 100, 1000, 5000; 3 runs
  .venv/bin/python scripts/benchmark.py --smoke            # a quick check (CI runs this)
Results: OUT/results.json, OUT/results.md, OUT/benchmark.png (default OUT: docs/benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dapr.ext.workflow import DaprWorkflowClient

from scripts import devstack

CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))  # = WORKER_MAX_CONCURRENCY
APP_ID = "workflow-worker"
# Settings for the worker under test beyond the defaults (--metrics adds its own).
WORKER_ENV: dict[str, str] = {}
# --tracing: the worker exports every span to a Zipkin server started on each stack.
TRACING = {"on": False}
# --flame DIR: py-spy samples the worker's process during the worker phase of each run.
FLAME: dict[str, Path | None] = {"dir": None}
# py-spy's output: flamegraph (SVG), or raw (collapsed stacks, for counting by frame).
FLAME_FORMAT = os.environ.get("BENCH_FLAME_FORMAT", "flamegraph")
# BENCH_FLAME_GIL=1: sample only the thread holding the GIL (Python's own CPU, not waits).
FLAME_GIL = os.environ.get("BENCH_FLAME_GIL", "") == "1"
# --metrics: the worker's metrics page after each worker phase is kept in OUT.
METRICS_DUMP: dict[str, Path | None] = {"dir": None}


def _order(instance_id: str) -> dict[str, Any]:
    """An approval workflow that waits (for the flow phase) instead of completing."""
    return {"order_id": instance_id, "amount": 5000, "approval_timeout_seconds": 3600}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99)}


class Observations:
    """Reads what the host's in-process observer appended to its file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.status: dict[tuple[str, str], float] = {}  # (event, correlation or instance) -> t
        self.noop: dict[str, float] = {}

    def poll(self) -> None:
        with self.path.open() as f:
            f.seek(self.offset)
            chunk = f.read()
            complete = chunk[: chunk.rfind("\n") + 1]
            self.offset += len(complete.encode())
        for line in complete.splitlines():
            record = json.loads(line)
            if record["kind"] == "noop":
                self.noop.setdefault(record["id"], record["t"])
            else:
                key = record.get("cid") or record.get("instance") or ""
                self.status.setdefault((record["event"], key), record["t"])

    def wait(self, have: Callable[[], int], n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if have() >= n:
                return
            time.sleep(0.05)
        raise TimeoutError(f"only {have()} of {n} arrived in {timeout:.0f}s")


class Host:
    """The worker process (with its observer) and its sidecar, on a fresh stack."""

    def __init__(self, stack: devstack.Stack, profile: str) -> None:
        self.stack = stack
        self.observations = Observations(stack.workdir / "observations.jsonl")
        self.observations.path.touch()
        # The observer shares the worker's app-id: let it subscribe to the status topic, and
        # the benchmark publish its no-op messages through the worker's sidecar.
        grant = "workflow-worker=workflow.start,workflow.approval,workflow.control"
        stack.component_patches.update(
            {
                f'"{grant};': f'"{grant},workflow.status,bench.noop;',
                "workflow.deadletter;": "workflow.deadletter,bench.noop;",
            }
        )
        app_port = devstack.free_port()
        self.sidecar = stack.start_sidecar(
            APP_ID, stack.components(profile), app_port=app_port, cwd=stack.workdir
        )
        env = {
            **self.sidecar.env,
            "BENCH_OBSERVATIONS": str(self.observations.path),
            "PYTHONPATH": str(devstack.PROJECT),
            "PYTHONUNBUFFERED": "1",
            "WORKER_LOG_LEVEL": "WARNING",
            **WORKER_ENV,
        }
        self.zipkin_port = 0
        if TRACING["on"]:  # OpenTelemetry's SDK on, configured as a user would
            self.zipkin_port = stack.start_zipkin().ports["http"]
            env["OTEL_TRACES_EXPORTER"] = "zipkin"
            env["OTEL_EXPORTER_ZIPKIN_ENDPOINT"] = (
                f"http://127.0.0.1:{self.zipkin_port}/api/v2/spans"
            )
        self.metrics_port = 0
        if env.get("WORKER_METRICS_ENABLED") == "true":
            self.metrics_port = devstack.free_port()
            env["WORKER_METRICS_PORT"] = str(self.metrics_port)
        self.proc = stack._spawn(  # the same spawning as every other process of the stack
            "bench-host",
            [sys.executable, str(devstack.PROJECT / "scripts" / "bench_host.py")],
            env=env,
            cwd=devstack.PROJECT,
        )
        devstack.wait_until(
            lambda: "worker ready" in self.proc.log.read_text(errors="replace"),
            90,
            "bench host",
            self.proc.alive,
        )
        self.client = DaprWorkflowClient(host="127.0.0.1", port=str(self.sidecar.grpc_port))

    def cpu_seconds(self) -> float:
        return devstack.cpu_seconds(self.proc.popen.pid)

    def stack_cpu(self) -> dict[str, float]:
        """CPU seconds so far of each process of the stack (worker host, its sidecar, Redis,
        placement, scheduler, ...) with the processes it started (PostgreSQL's backends,
        RabbitMQ's Erlang VM), by name: where a phase's time goes."""
        return {proc.name: devstack.group_cpu_seconds(proc.popen.pid) for proc in self.stack.procs}

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def traces_stored(self) -> int | None:
        """How many traces of handled start messages Zipkin holds (None: tracing off): a
        check that tracing was on and exported the load."""
        if not self.zipkin_port:
            return None
        url = (
            f"http://127.0.0.1:{self.zipkin_port}/api/v2/traces?serviceName={APP_ID}"
            f"&spanName=process%20workflow.start&lookback=86400000&limit=100000"
        )
        with urllib.request.urlopen(url, timeout=30) as response:
            return len(json.load(response))

    def metrics_text(self) -> str:
        """The worker's metrics page ("" when metrics are off)."""
        if not self.metrics_port:
            return ""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def messages_counted(self) -> float | None:
        """What the worker's metrics counted as handled (None: metrics off): a check that
        they were on and saw the load."""
        if not self.metrics_port:
            return None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("workflow_worker_messages_total{")
        )

    def publish(self, topic: str, data: Any, message_id: str) -> float:
        """Publish a CloudEvent through the worker's sidecar; returns the send time."""
        body = json.dumps(
            {
                "specversion": "1.0",
                "id": message_id,
                "source": "benchmark",
                "type": "bench",
                "datacontenttype": "application/json",
                "data": data,
            }
        ).encode()
        sent = time.time()
        status = devstack.publish(
            self.sidecar.http_port, topic, body, "application/cloudevents+json", timeout=30
        )
        assert status == 204, status
        return sent


def _cpu_since(host: Host, before: dict[str, float]) -> dict[str, float]:
    now = host.stack_cpu()
    return {name: round(now[name] - before.get(name, 0.0), 2) for name in now}


@contextlib.contextmanager
def fresh_host(profile: str, workdir: Path) -> Iterator[Host]:
    """A new stack (placement, scheduler, the profile's backends) with the worker host on it;
    prints every process's log when the run fails, and stops it all."""
    with devstack.Stack(workdir) as stack:
        stack.start_placement()
        stack.start_scheduler()
        stack.start_backend(profile)
        host = Host(stack, profile)
        try:
            yield host
        except Exception:
            print(stack.failed_logs(), file=sys.stderr)
            raise
        finally:
            host.client.close()


def _parallel(items: Iterable[Any], fn: Callable[[Any], Any]) -> list[Any]:
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(fn, items))


def phase_direct(host: Host, n: int) -> dict[str, Any]:
    def start(i: int) -> float:
        began = time.perf_counter()
        host.client.schedule_new_workflow(
            "approval_workflow", input=_order(f"direct-{i}"), instance_id=f"direct-{i}"
        )
        return time.perf_counter() - began

    cpu, began, stack_cpu = host.cpu_seconds(), time.perf_counter(), host.stack_cpu()
    benchmark_cpu = time.process_time()
    latencies = _parallel(range(n), start)
    wall = time.perf_counter() - began
    return {
        "throughput": n / wall,
        **percentiles(latencies),
        "worker_cpu_s": host.cpu_seconds() - cpu,
        "cpu_s": {**_cpu_since(host, stack_cpu), "benchmark": time.process_time() - benchmark_cpu},
        **settle_watch(host, n),
    }


def settle_watch(host: Host, n: int) -> dict[str, Any]:
    """Wait until the worker's watch has reported the direct phase's instances (an `observed`
    `started` for each: they were started by a client the worker did not write), so that the
    worker phase is not charged with that work: in the embedded default it took more than a
    third of the worker's CPU samples during the next phase. Returns how long it took and
    what it cost (skipped when the watch is off)."""
    if os.environ.get("WORKER_WATCH_ENABLED", "true").lower() in ("false", "0"):
        return {}
    obs = host.observations
    cpu, began = host.cpu_seconds(), time.perf_counter()
    ids = [f"direct-{i}" for i in range(n)]
    try:
        obs.wait(lambda: sum(("started", i) in obs.status for i in ids), n, 60 + n * 0.2)
    except TimeoutError as error:
        print(f"the watch did not report every direct start: {error}", file=sys.stderr)
    return {"watch_settle_s": time.perf_counter() - began, "watch_cpu_s": host.cpu_seconds() - cpu}


def _through_worker(
    host: Host,
    topic: str,
    bodies: list[tuple[str, Any]],
    event: str,
    key: Callable[[str, Any], str],
    timeout: float,
) -> dict[str, Any]:
    obs = host.observations
    cpu, stack_cpu = host.cpu_seconds(), host.stack_cpu()
    benchmark_cpu = time.process_time()
    sent = dict(
        zip(
            [m for m, _ in bodies],
            _parallel(bodies, lambda mb: host.publish(topic, mb[1], mb[0])),
            strict=True,
        )
    )
    keys = {m: key(m, b) for m, b in bodies}
    obs.wait(lambda: sum((event, k) in obs.status for k in keys.values()), len(bodies), timeout)
    arrived = {m: obs.status[(event, k)] for m, k in keys.items()}
    latencies = [arrived[m] - sent[m] for m in sent]
    wall = max(arrived.values()) - min(sent.values())
    return {
        "throughput": len(bodies) / wall,
        **percentiles(latencies),
        "worker_cpu_s": host.cpu_seconds() - cpu,
        "cpu_s": {**_cpu_since(host, stack_cpu), "benchmark": time.process_time() - benchmark_cpu},
    }


def phase_worker(host: Host, n: int) -> tuple[dict[str, Any], list[str]]:
    ids = [f"order-{i}" for i in range(n)]
    bodies = [
        (str(uuid.uuid4()), {"workflow": "approval_workflow", "instance_id": i, "input": _order(i)})
        for i in ids
    ]
    result = _through_worker(
        host, "workflow.start", bodies, "started", lambda m, _b: m, timeout=60 + n * 0.2
    )
    return result, ids


def phase_flow(host: Host, ids: list[str]) -> dict[str, Any]:
    bodies = [(str(uuid.uuid4()), {"instance_id": i, "data": True}) for i in ids]
    return _through_worker(
        host,
        "workflow.approval",
        bodies,
        "completed",
        lambda _m, b: b["instance_id"],
        timeout=60 + len(ids) * 0.3,
    )


def phase_pubsub(host: Host, n: int) -> dict[str, Any]:
    obs = host.observations
    ids = [str(uuid.uuid4()) for _ in range(n)]
    sent = dict(
        zip(ids, _parallel(ids, lambda m: host.publish("bench.noop", {"n": m}, m)), strict=True)
    )
    obs.wait(lambda: sum(m in obs.noop for m in ids), n, 60 + n * 0.1)
    latencies = [obs.noop[m] - sent[m] for m in ids]
    wall = max(obs.noop[m] for m in ids) - min(sent.values())
    return {"throughput": n / wall, **percentiles(latencies)}


def _paced(count: int, rate: float, send: Callable[[int], float]) -> list[float]:
    """Call ``send(i)`` ``count`` times at ``rate`` per second (CONCURRENCY threads)."""
    began = time.monotonic()

    def at_its_time(i: int) -> float:
        delay = began + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return send(i)

    return _parallel(range(count), at_its_time)


def paced_run(profile: str, count: int, rate: float, workdir: Path) -> dict[str, Any]:
    """Latency below saturation: the same paced load, direct and through the worker."""
    with fresh_host(profile, workdir) as host:

        def direct(i: int) -> float:
            began = time.perf_counter()
            host.client.schedule_new_workflow(
                "approval_workflow", input=_order(f"d{i}"), instance_id=f"d{i}"
            )
            return time.perf_counter() - began

        direct_latency = _paced(count, rate, direct)
        ids = [str(uuid.uuid4()) for _ in range(count)]
        sent = _paced(
            count,
            rate,
            lambda i: host.publish(
                "workflow.start",
                {
                    "workflow": "approval_workflow",
                    "instance_id": f"w{i}",
                    "input": _order(f"w{i}"),
                },
                ids[i],
            ),
        )
        obs = host.observations
        obs.wait(lambda: sum(("started", m) in obs.status for m in ids), count, 120)
        worker_latency = [obs.status[("started", m)] - t for m, t in zip(ids, sent, strict=True)]
        direct_p, worker_p = percentiles(direct_latency), percentiles(worker_latency)
        return {
            "profile": profile,
            "count": count,
            "rate": rate,
            "direct": direct_p,
            "worker": worker_p,
            "added_p99_ms": worker_p["p99_ms"] - direct_p["p99_ms"],
        }


def paced_markdown(runs: list[dict[str, Any]], machine: str, command: str) -> str:
    lines = [
        f"Machine: {machine}. Command: `{command}`. Medians of the runs.",
        "",
        "| profile | messages | rate/s | direct p50/p95/p99 ms | worker p50/p95/p99 ms "
        "| **added p99 ms** |",
        "|---|---|---|---|---|---|",
    ]
    for profile in dict.fromkeys(r["profile"] for r in runs):
        mine = [r for r in runs if r["profile"] == profile]
        d = [median_of(mine, "direct", k) for k in ("p50_ms", "p95_ms", "p99_ms")]
        w = [median_of(mine, "worker", k) for k in ("p50_ms", "p95_ms", "p99_ms")]
        lines.append(
            f"| {profile} | {mine[0]['count']} | {mine[0]['rate']:.0f} | "
            f"{d[0]:.0f}/{d[1]:.0f}/{d[2]:.0f} | {w[0]:.0f}/{w[1]:.0f}/{w[2]:.0f} | "
            f"**{median_of(mine, 'added_p99_ms'):.0f}** |"
        )
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def sampled(host: Host, svg: Path | None) -> Iterator[None]:
    """py-spy samples the worker's process (its threads, idle ones left out) while the block
    runs, without pausing it, and writes a flame graph to ``svg`` (None: nothing)."""
    if svg is None:
        yield
        return
    spy = Path(sys.executable).parent / "py-spy"
    recorder = subprocess.Popen(
        [
            *(str(spy), "record", "--nonblocking", "--rate", "200", "--format", FLAME_FORMAT),
            *(["--gil"] if FLAME_GIL else []),
            *("--output", str(svg), "--pid", str(host.proc.popen.pid)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its graph and exits
        _, errors = recorder.communicate(timeout=60)
        if recorder.returncode != 0 or not svg.exists():
            print(f"py-spy failed: {errors.decode(errors='replace')[-400:]}", file=sys.stderr)


def one_run(profile: str, n: int, workdir: Path, run: int = 0) -> dict[str, Any]:
    flame = FLAME["dir"]
    with fresh_host(profile, workdir) as host:
        direct = phase_direct(host, n)
        svg = flame / f"flame-{profile}-{n}-run{run + 1}.svg" if flame is not None else None
        with sampled(host, svg):
            worker, ids = phase_worker(host, n)
        if METRICS_DUMP["dir"] is not None and host.metrics_port:
            page = METRICS_DUMP["dir"] / f"metrics-{profile}-{n}-run{run + 1}.prom"
            page.write_text(host.metrics_text())
        flow = phase_flow(host, ids)
        pubsub = phase_pubsub(host, n)
        return {
            "profile": profile,
            "n": n,
            "direct": direct,
            "worker": worker,
            "flow": flow,
            "pubsub": pubsub,
            "peak_rss_mb": host.peak_rss_mb(),
            "metrics_messages_counted": host.messages_counted(),
            "traces_stored": host.traces_stored(),
            "ratio": worker["throughput"] / direct["throughput"],
            "added_p99_ms": worker["p99_ms"] - direct["p99_ms"],
        }


def median_of(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for part in path:
            value = value[part]
        values.append(float(value))
    return statistics.median(values)


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for profile in dict.fromkeys(r["profile"] for r in results):
        for n in dict.fromkeys(r["n"] for r in results if r["profile"] == profile):
            runs = [r for r in results if (r["profile"], r["n"]) == (profile, n)]
            row: dict[str, Any] = {"profile": profile, "n": n, "runs": len(runs)}
            for phase in ("direct", "worker", "flow", "pubsub"):
                for metric in ("throughput", "p50_ms", "p95_ms", "p99_ms"):
                    row[f"{phase}_{metric}"] = median_of(runs, phase, metric)
            for extra in ("ratio", "added_p99_ms", "peak_rss_mb"):
                row[extra] = median_of(runs, extra)
            row["worker_cpu_s"] = median_of(runs, "worker", "worker_cpu_s")
            if all("cpu_s" in r["worker"] for r in runs):
                row["cpu_ms"] = {
                    phase: {
                        part: statistics.median(_cpu_parts(r, phase)[part] for r in runs)
                        for part in _CPU_PARTS
                    }
                    for phase in ("direct", "worker")
                }
            rows.append(row)
    return rows


# Where a phase's CPU goes, per start: the stack's processes, grouped.
_CPU_PARTS = ("worker", "daprd", "scheduler", "backends", "load", "total")
# The profiles' backend processes (Redis; PostgreSQL with Kafka or RabbitMQ and its epmd).
_BACKENDS = ("redis", "postgres", "kafka", "rabbitmq", "epmd")


def _cpu_parts(run: dict[str, Any], phase: str) -> dict[str, float]:
    """CPU milliseconds per start in ``phase`` of ``run``, by part of the stack."""
    per_start = {name: 1000 * s / run["n"] for name, s in run[phase]["cpu_s"].items()}
    parts = {part: 0.0 for part in _CPU_PARTS}
    for name, ms in per_start.items():
        if name == "bench-host":
            part = "worker"  # the worker process, with the observer in it
        elif name.startswith("daprd"):
            part = "daprd"
        elif name == "benchmark":
            part = "load"  # this script: the publishers and the direct client
        elif name == "scheduler":
            part = name
        elif name in _BACKENDS:
            part = "backends"
        else:
            continue  # placement and the like: counted in the total only
        parts[part] += ms
    parts["total"] = sum(per_start.values())
    return parts


def cpu_markdown(rows: list[dict[str, Any]]) -> str:
    """Where the CPU goes, per start (medians), and what follows for worker/direct: on a
    machine the stack keeps busy, throughput is cores / CPU per start, so the ratio is
    direct's CPU per start over the worker path's. "If the worker process were free" charges
    the worker path only with what the worker process costs in the direct phase (hosting the
    workflows): the bound for any worker written in this process, on this stack."""
    lines = [
        "| profile | N | phase | worker process | daprd | scheduler | backends | load | "
        "**total** ms/start | direct/worker by CPU | if the worker process were free |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "cpu_ms" not in r:
            continue
        direct, worker = r["cpu_ms"]["direct"], r["cpu_ms"]["worker"]
        free = worker["total"] - worker["worker"] + direct["worker"]
        for phase, cpu in (("direct", direct), ("worker", worker)):
            tail = (
                f"{direct['total'] / worker['total']:.2f} | {direct['total'] / free:.2f}"
                if phase == "worker"
                else " | "
            )
            lines.append(
                f"| {r['profile']} | {r['n']} | {phase} | {cpu['worker']:.2f} | "
                f"{cpu['daprd']:.2f} | {cpu['scheduler']:.2f} | {cpu['backends']:.2f} | "
                f"{cpu['load']:.2f} | **{cpu['total']:.2f}** | {tail} |"
            )
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict[str, Any]], machine: str, command: str) -> str:
    lines = [
        f"Machine: {machine}. Command: `{command}`. Medians of the runs; latencies in ms "
        "(worker and flow: publish to event; direct: the call).",
        "",
        "| profile | N | direct starts/s | worker starts/s | **worker/direct** | "
        "worker p50/p95/p99 | direct p99 | **added p99** | flow/s (p99) | "
        "pub/sub msgs/s (p99) | worker CPU s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['profile']} | {r['n']} | {r['direct_throughput']:.0f} | "
            f"{r['worker_throughput']:.0f} | **{r['ratio']:.2f}** | "
            f"{r['worker_p50_ms']:.0f}/{r['worker_p95_ms']:.0f}/{r['worker_p99_ms']:.0f} | "
            f"{r['direct_p99_ms']:.0f} | **{r['added_p99_ms']:.0f}** | "
            f"{r['flow_throughput']:.0f} ({r['flow_p99_ms']:.0f}) | "
            f"{r['pubsub_throughput']:.0f} ({r['pubsub_p99_ms']:.0f}) | "
            f"{r['worker_cpu_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for profile in dict.fromkeys(r["profile"] for r in rows):
        mine = [r for r in rows if r["profile"] == profile]
        ns = [r["n"] for r in mine]
        for phase, style in (("direct", "--"), ("worker", "-"), ("pubsub", ":")):
            left.plot(
                ns,
                [r[f"{phase}_throughput"] for r in mine],
                style,
                marker="o",
                label=f"{profile}: {phase}",
            )
            if phase != "pubsub":
                right.plot(
                    ns,
                    [r[f"{phase}_p99_ms"] for r in mine],
                    style,
                    marker="o",
                    label=f"{profile}: {phase} p99",
                )
    right.set_yscale("log")  # a flood's queueing dwarfs the rest
    for axis, title, unit in (
        (left, "Throughput", "per second"),
        (right, "Latency p99 (publish to event; direct: the call)", "ms"),
    ):
        axis.set_xscale("log")
        axis.set_xlabel("N (messages or calls)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(stem: Path, data: dict[str, Any], table: str) -> None:
    """``stem``.json (the figures) and ``stem``.md (the table), and print the table."""
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    stem.with_suffix(".md").write_text(table)
    print(table)


def machine_description() -> str:
    return (
        f"{os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line this script takes (the docs' examples are checked against it)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profiles",
        nargs="+",
        default=["default", "redis"],
        choices=list(devstack.PROFILES),
        help="default: default redis; postgres-kafka and postgres-rabbitmq on request",
    )
    parser.add_argument("--n", nargs="+", type=int, default=[100, 1000, 5000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="N=20, 1 run, both profiles")
    parser.add_argument("--out", type=Path, default=devstack.PROJECT / "docs" / "benchmark")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="run the worker with its Prometheus endpoint on (scraped once after each run)",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="run the worker with tracing on (OpenTelemetry's SDK, every span exported to a "
        "Zipkin server started on each stack; the sidecar's own tracing stays off)",
    )
    parser.add_argument(
        "--flame",
        type=Path,
        metavar="DIR",
        help="sample the worker's process with py-spy during each run's worker phase: "
        "DIR/flame-<profile>-<N>-run<k>.svg",
    )
    parser.add_argument(
        "--paced",
        nargs=2,
        type=float,
        metavar=("COUNT", "RATE"),
        help="instead: latency below saturation, COUNT messages at RATE per second",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.n, args.runs = [20], 1
    if args.metrics:
        WORKER_ENV["WORKER_METRICS_ENABLED"] = "true"
        METRICS_DUMP["dir"] = args.out
    TRACING["on"] = args.tracing
    if args.flame is not None:
        args.flame.mkdir(parents=True, exist_ok=True)
        FLAME["dir"] = args.flame
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = machine_description()
    if args.paced:
        count, rate = int(args.paced[0]), args.paced[1]
        paced: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            for profile in args.profiles:
                for run in range(args.runs):
                    result = paced_run(profile, count, rate, Path(tmp) / f"{profile}-{run}")
                    paced.append(result)
                    print(
                        f"{profile:8} paced run {run + 1}: added p99 "
                        f"{result['added_p99_ms']:.0f} ms",
                        flush=True,
                    )
        write_report(
            args.out / "paced",
            {"machine": machine, "command": command, "runs": paced},
            paced_markdown(paced, machine, command),
        )
        return 0
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for profile in args.profiles:
            for n in args.n:
                for run in range(args.runs):
                    started = time.monotonic()
                    result = one_run(profile, n, Path(tmp) / f"{profile}-{n}-{run}", run)
                    results.append(result)
                    print(
                        f"{profile:8} N={n:<5} run {run + 1}: worker/direct "
                        f"{result['ratio']:.2f}, worker {result['worker']['throughput']:.0f}/s"
                        f" p99 {result['worker']['p99_ms']:.0f} ms, direct "
                        f"{result['direct']['throughput']:.0f}/s, "
                        f"({time.monotonic() - started:.0f}s)",
                        flush=True,
                    )
    rows = summarise(results)
    plot(rows, args.out / "benchmark.png")
    write_report(
        args.out / "results",
        {"machine": machine, "command": command, "runs": results, "medians": rows},
        markdown(rows, machine, command) + "\n" + cpu_markdown(rows),
    )
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda info: None  # quiet pool threads at interpreter exit
    sys.exit(main())
