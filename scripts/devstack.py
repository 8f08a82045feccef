"""Starts a local Dapr stack: placement, scheduler, Redis (optional), sidecars and workers.

Used by ``scripts/run.sh`` (``python scripts/devstack.py up``) and by the test fixtures.
Every process gets free ports (unless given), writes its log to a file, is waited on with a
deadline until healthy, and is stopped, in reverse order, when the `Stack` closes, also on
Ctrl+C or a failing test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
COMPONENTS = PROJECT / "components"
# The sidecars' Configuration: a name resolution that sends nothing off the machine (README).
CONFIG = COMPONENTS / "config.yaml"


def dapr_bin(name: str) -> Path:
    """Where the Dapr CLI looks for its binaries."""
    base = Path(os.environ.get("DAPR_RUNTIME_PATH") or Path.home())
    return base / ".dapr" / "bin" / name


def _pinned(name: str) -> str:
    """A version pinned in scripts/versions.env (``NAME="value"``)."""
    text = (PROJECT / "scripts" / "versions.env").read_text()
    found = re.search(rf'^{name}="([^"]+)"', text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"{name} is not in scripts/versions.env")
    return found.group(1)


def zipkin_jar() -> Path:
    """Where scripts/setup.sh puts Zipkin's server (``ZIPKIN_JAR`` overrides)."""
    if os.environ.get("ZIPKIN_JAR"):
        return Path(os.environ["ZIPKIN_JAR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    version = _pinned("ZIPKIN_VERSION")
    return cache / "dapr-workflow-worker" / "zipkin" / f"zipkin-server-{version}-exec.jar"


def traced_config(dest: Path, zipkin_port: int) -> Path:
    """A copy of the sidecars' Configuration (components/config.yaml, name resolution and
    all) that also samples every trace and exports daprd's spans to Zipkin on
    ``zipkin_port``."""
    text = CONFIG.read_text().replace("name: workflow-worker\n", "name: workflow-worker-traced\n")
    text += (
        "  tracing:\n"
        '    samplingRate: "1"\n'
        "    zipkin:\n"
        f'      endpointAddress: "http://127.0.0.1:{zipkin_port}/api/v2/spans"\n'
    )
    dest.write_text(text)
    return dest


def write_resource(path: Path, text: str) -> None:
    """Write a file of a resources folder that running sidecars may be watching: daprd 1.18
    hot-reloads them, and a file caught half-written (a rewrite truncates it first) reads as
    deleted: a deleted Resiliency restarts the sidecar, which then loads the folder without the
    component being rewritten (seen: "state store statestore is not configured" for the rest
    of a test session). So: unchanged text is not written again, new text replaces the file
    in one rename."""
    if path.exists() and path.read_text() == text:
        return
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def one_at_a_time(components: Path) -> Path:
    """A copy of ``components`` whose pub/sub delivers one message at a time: how a consumer
    that needs per-instance order reads (the worker's own copy delivers 32 at once)."""
    ordered = components.with_name(components.name + "-sequential")
    ordered.mkdir(exist_ok=True)
    for source in components.glob("*.yaml"):
        text = source.read_text().replace(
            '- name: concurrency\n      value: "32"', '- name: concurrency\n      value: "1"'
        )
        write_resource(ordered / source.name, text)
    if 'value: "1"' not in (ordered / "pubsub.yaml").read_text():
        raise RuntimeError("the pub/sub component's concurrency setting has moved")
    return ordered


# Ports are handed out from below Linux's ephemeral range (32768-60999 by default), where the
# kernel never puts the local end of an outgoing connection, and never twice in one process.
_PORTS = range(20000, 32768)
_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A port that nothing listens on now and that this process has not handed out before:
    two calls never return the same port, even before the first one is bound."""
    with _ports_lock:
        candidates = [p for p in _PORTS if p not in _handed_out]
        while candidates:
            port = candidates.pop(random.randrange(len(candidates)))
            with socket.socket() as probe:
                try:
                    probe.bind(("0.0.0.0", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port left in {_PORTS.start}-{_PORTS.stop - 1}")


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    alive: Callable[[], bool] = lambda: True,
    interval: float = 0.1,
) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds or when ``alive`` fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not alive():
            raise RuntimeError(f"{what}: the process exited")
        time.sleep(interval)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError):
        return False


def publish(
    http_port: int, topic: str, body: bytes, content_type: str, *, timeout: float = 10
) -> int:
    """POST ``body`` to a sidecar's publish endpoint for ``topic`` on the pub/sub component
    ``pubsub``, as any Dapr client over HTTP would; the HTTP status (204: published; an error
    status is returned, not raised). ``content_type``: application/cloudevents+json for a
    whole CloudEvent, anything else for data the sidecar wraps in one of its own."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/v1.0/publish/pubsub/{topic}",
        data=body,
        headers={"Content-Type": content_type},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Proc:
    """A started process, its log file, and how to stop it."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40, width: int = 400) -> str:
        """The last ``lines`` lines of the log, cut to ``width``, without etcd's trace chatter."""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        kept = [line[:width] for line in text if "traceutil/trace.go" not in line]
        return "\n".join(kept[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)


@dataclass
class Sidecar:
    app_id: str
    proc: Proc
    grpc_port: int
    http_port: int
    app_port: int

    @property
    def env(self) -> dict[str, str]:
        """Environment for a client or worker talking to this sidecar."""
        return {
            "DAPR_GRPC_PORT": str(self.grpc_port),
            "DAPR_HTTP_PORT": str(self.http_port),
            "APP_ID": self.app_id,
            "APP_PORT": str(self.app_port),
        }


class Stack:
    """A set of processes that are all stopped together, in reverse order."""

    def __init__(self, workdir: Path, *, echo: bool = False) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.procs: list[Proc] = []
        self.placement_port = 0
        self.scheduler_port = 0
        self.redis_port = 0
        # Text replacements applied to every copied component file (tests widen scopes).
        self.component_patches: dict[str, str] = {}

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as error:  # keep stopping the others
                print(f"[devstack] stopping {proc.name}: {error}", file=sys.stderr)
        self.procs.clear()

    def failed_logs(self) -> str:
        return "\n".join(
            f"----- {p.name} ({'running' if p.alive() else 'exited'}) {p.log}\n{p.log_tail()}"
            for p in self.procs
        )

    def _spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ports: dict[str, int] | None = None,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        out = log.open("ab")
        popen = subprocess.Popen(
            [*_DIE_WITH_PARENT, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd or self.workdir,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        out.close()
        proc = Proc(name, popen, log, ports or {})
        self.procs.append(proc)
        if self.echo:
            print(f"[devstack] started {name} (pid {popen.pid}), log {log}")
        return proc

    def _ready(
        self, proc: Proc, check: Callable[[], bool], timeout: float, interval: float = 0.1
    ) -> Proc:
        try:
            wait_until(check, timeout, proc.name, proc.alive, interval)
        except Exception as error:
            raise RuntimeError(f"{error}\n{proc.log_tail()}") from error
        return proc

    def start_placement(self, port: int | None = None, timeout: float = 30) -> Proc:
        self.placement_port = port or free_port()
        healthz, raft = free_port(), free_port()
        proc = self._spawn(
            "placement",
            [
                str(dapr_bin("placement")),
                "--port",
                str(self.placement_port),
                "--healthz-port",
                str(healthz),
                "--enable-metrics=false",
                "--initial-cluster",
                f"dapr-placement-0=127.0.0.1:{raft}",
            ],
            ports={"grpc": self.placement_port, "healthz": healthz},
        )
        return self._ready(proc, lambda: http_ok(f"http://127.0.0.1:{healthz}/healthz"), timeout)

    def start_scheduler(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        timeout: float = 60,
        etcd_client_port: int | None = None,
    ) -> Proc:
        """``etcd_client_port``: where its embedded etcd serves clients (default: a free
        port; the dapr CLI's `workflow purge` looks for it on localhost:2379)."""
        self.scheduler_port = port or free_port()
        healthz, client, peer = free_port(), etcd_client_port or free_port(), free_port()
        data = data_dir or (self.workdir / "scheduler-data")
        data.mkdir(parents=True, exist_ok=True)
        proc = self._spawn(
            "scheduler",
            [
                str(dapr_bin("scheduler")),
                "--port",
                str(self.scheduler_port),
                "--healthz-port",
                str(healthz),
                "--enable-metrics=false",
                "--etcd-data-dir",
                str(data),
                "--etcd-client-port",
                str(client),
                "--id",
                "dapr-scheduler-server-0",
                "--etcd-initial-cluster",
                f"dapr-scheduler-server-0=http://127.0.0.1:{peer}",
            ],
            ports={"grpc": self.scheduler_port, "healthz": healthz},
        )
        return self._ready(proc, lambda: http_ok(f"http://127.0.0.1:{healthz}/healthz"), timeout)

    def start_redis(self, port: int | None = None, timeout: float = 20) -> Proc:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        self.redis_port = port or free_port()
        data = self.workdir / "redis-data"
        data.mkdir(exist_ok=True)
        proc = self._spawn(
            "redis",
            [
                server,
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                str(data),
            ],
            ports={"redis": self.redis_port},
        )
        return self._ready(proc, lambda: port_open(self.redis_port), timeout)

    def start_zipkin(self, port: int | None = None, timeout: float = 90) -> Proc:
        """Zipkin's server (in-memory storage) on 127.0.0.1:``port``: collector at
        /api/v2/spans, query API at /api/v2/trace/<id>."""
        jar = zipkin_jar()
        java = shutil.which("java")
        if java is None or not jar.exists():
            raise RuntimeError(f"Zipkin's server ({jar}) or java is missing: run scripts/setup.sh")
        port = port or free_port()
        proc = self._spawn(
            "zipkin",
            [
                java,
                "-Xms64m",
                "-Xmx256m",
                "-XX:TieredStopAtLevel=1",  # starts faster; plenty for a test's traces
                "-jar",
                str(jar),
                f"--armeria.ports[0].port={port}",
                "--armeria.ports[0].ip=127.0.0.1",
                "--armeria.ports[0].protocols=http",
            ],
            ports={"http": port},
        )
        return self._ready(proc, lambda: http_ok(f"http://127.0.0.1:{port}/health"), timeout, 0.5)

    def components(self, profile: str, extra: Mapping[str, str] | None = None) -> Path:
        """A copy of ``components/<profile>`` for this stack (Redis port filled in)."""
        dest = self.workdir / f"components-{profile}"
        dest.mkdir(exist_ok=True)
        for source in sorted((COMPONENTS / profile).glob("*.yaml")):
            text = source.read_text()
            if self.redis_port:
                text = text.replace("localhost:6379", f"127.0.0.1:{self.redis_port}")
            for old, new in self.component_patches.items():
                text = text.replace(old, new)
            write_resource(dest / source.name, text)
        for name, text in (extra or {}).items():
            write_resource(dest / name, text)
        return dest

    def start_sidecar(
        self,
        app_id: str,
        resources: Path,
        *,
        app_port: int,
        name: str | None = None,
        grpc_port: int | None = None,
        http_port: int | None = None,
        app_protocol: str = "grpc",
        cwd: Path | None = None,
        timeout: float = 60,
        wait_for_app: bool = False,
        config: Path = CONFIG,
        app_health_probe_seconds: int | None = None,
        metrics_port: int | None = None,
    ) -> Sidecar:
        """``app_health_probe_seconds``: probe the app's health at this interval, as
        ``dapr run -f .`` does with dapr.yaml (default: no app health checks).
        ``metrics_port``: serve daprd's Prometheus metrics there (default: metrics off)."""
        grpc_port, http_port = grpc_port or free_port(), http_port or free_port()
        name = name or f"daprd-{app_id}"
        health = (
            [
                "--enable-app-health-check",
                "--app-health-probe-interval",
                str(app_health_probe_seconds),
            ]
            if app_health_probe_seconds
            else []
        )
        proc = self._spawn(
            name,
            [
                str(dapr_bin("daprd")),
                "--app-id",
                app_id,
                "--app-port",
                str(app_port),
                "--app-protocol",
                app_protocol,
                "--dapr-grpc-port",
                str(grpc_port),
                "--dapr-http-port",
                str(http_port),
                "--dapr-internal-grpc-port",
                str(free_port()),
                "--metrics-port",
                str(metrics_port or free_port()),
                f"--enable-metrics={'true' if metrics_port else 'false'}",
                "--placement-host-address",
                f"127.0.0.1:{self.placement_port}",
                "--scheduler-host-address",
                f"127.0.0.1:{self.scheduler_port}",
                "--resources-path",
                str(resources),
                "--config",
                str(config),
                "--log-level",
                "info",
                *health,
            ],
            cwd=cwd,
            ports={"grpc": grpc_port, "http": http_port},
        )
        path = "/v1.0/healthz" if wait_for_app else "/v1.0/healthz/outbound"
        self._ready(proc, lambda: http_ok(f"http://127.0.0.1:{http_port}{path}"), timeout)
        return Sidecar(app_id, proc, grpc_port, http_port, app_port)

    def start_worker(
        self,
        sidecar: Sidecar,
        *,
        name: str = "worker",
        env: Mapping[str, str] | None = None,
        timeout: float = 90,
        trust_ready_line: bool = False,
    ) -> Proc:
        """``python -m worker`` against ``sidecar``; ready once it logs "worker ready" and the
        sidecar reports healthy. ``trust_ready_line``: the log line alone, as a user reads it
        (the sidecar's health may follow later)."""
        worker_env = {**sidecar.env, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = self._spawn(name, [sys.executable, "-m", "worker"], env=worker_env, cwd=PROJECT)
        healthz = f"http://127.0.0.1:{sidecar.http_port}/v1.0/healthz"
        self._ready(
            proc,
            lambda: _logged_ready(proc) and (trust_ready_line or http_ok(healthz)),
            timeout,
            interval=0.02,
        )
        return proc


# Each process gets SIGTERM if the one that started it dies without stopping it (killed, or a
# timeout): nothing is left running. setpriv (util-linux) sets that, then execs the command.
_DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []


_CLI_ETCD_PORT = 2379


def _logged_ready(proc: Proc) -> bool:
    try:
        return "worker ready" in proc.log.read_text(errors="replace")
    except OSError:
        return False


@contextlib.contextmanager
def control_plane(
    workdir: Path, placement_port: int | None, scheduler_port: int | None, echo: bool = True
) -> Iterator[Stack]:
    with Stack(workdir, echo=echo) as stack:
        stack.start_placement(placement_port)
        # `dapr workflow purge` (CLI 1.16.5) also deletes the instance's scheduler jobs through
        # etcd on localhost:2379, as `dapr init` lays it out: serve it there when that is free.
        etcd = _CLI_ETCD_PORT if not port_open(_CLI_ETCD_PORT) else None
        if etcd is None:
            print(f"[devstack] port {_CLI_ETCD_PORT} is taken: `dapr workflow purge` will hang")
        stack.start_scheduler(
            scheduler_port, data_dir=workdir / "scheduler-data", etcd_client_port=etcd
        )
        yield stack


def _up(args: argparse.Namespace) -> int:
    """Run placement and scheduler (and Redis) until Ctrl+C or SIGTERM."""
    stop = {"now": False}

    def on_signal(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workdir = Path(args.workdir).resolve()
    with control_plane(workdir, args.placement_port, args.scheduler_port) as stack:
        if args.redis:
            stack.start_redis(args.redis_port)
        print(
            f"[devstack] placement on {stack.placement_port}, scheduler on "
            f"{stack.scheduler_port}"
            + (f", redis on {stack.redis_port}" if args.redis else "")
            + f"; data and logs in {workdir}",
            flush=True,
        )
        if args.ready_file:
            Path(args.ready_file).write_text("ready\n")
        while not stop["now"]:
            dead = [p.name for p in stack.procs if not p.alive()]
            if dead:
                print(
                    f"[devstack] {', '.join(dead)} exited:\n{stack.failed_logs()}", file=sys.stderr
                )
                return 1
            time.sleep(0.5)
    print("[devstack] stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run placement and scheduler until Ctrl+C")
    up.add_argument("--placement-port", type=int, default=int(os.environ.get("PLACEMENT_PORT", 0)))
    up.add_argument("--scheduler-port", type=int, default=int(os.environ.get("SCHEDULER_PORT", 0)))
    up.add_argument("--redis", action="store_true", help="also run redis-server")
    up.add_argument("--redis-port", type=int, default=int(os.environ.get("REDIS_PORT", 0)))
    up.add_argument("--workdir", default=str(PROJECT / ".data"))
    up.add_argument("--ready-file", help="touched once everything is healthy")
    args = parser.parse_args(argv)
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
