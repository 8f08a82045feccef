"""Starts a local Dapr stack: placement, scheduler, a profile's backends (Redis, or PostgreSQL
and Kafka or RabbitMQ), sidecars and workers.

Used by ``scripts/run.sh`` (``python scripts/devstack.py up``) and by the test fixtures.
Every process gets free ports (unless given), writes its log to a file, is waited on with a
deadline until healthy, and is stopped, in reverse order, when the `Stack` closes, also on
Ctrl+C or a failing test.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
COMPONENTS = PROJECT / "components"
# The sidecars' Configuration: a name resolution that sends nothing off the machine
# (docs/how-to/profiles.md).
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


def kafka_lib() -> Path:
    """Where scripts/setup.sh puts Kafka's broker jars (``KAFKA_LIB`` overrides)."""
    if os.environ.get("KAFKA_LIB"):
        return Path(os.environ["KAFKA_LIB"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dapr-workflow-worker" / "kafka" / _pinned("KAFKA_VERSION") / "lib"


# The components/ folders the stack can start the backends of, and what each needs.
PROFILES = ("default", "redis", "postgres-kafka", "postgres-rabbitmq")
# PostgreSQL's server programs (Debian's postgresql-15 puts them here, off PATH).
_POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


def postgres_bin(name: str) -> Path:
    """``initdb``/``postgres`` from PATH, else from Debian's PostgreSQL 15."""
    found = shutil.which(name)
    return Path(found) if found else _POSTGRES_BIN / name


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
    that needs per-instance order reads (the worker's own copy delivers 32 at once). Redis:
    ``concurrency`` 1; RabbitMQ: ``prefetchCount`` 1, ``concurrencyMode`` single. (Kafka
    delivers each partition's messages one after another anyway: returned as it is.)"""
    pubsub = (components / "pubsub.yaml").read_text()
    if "type: pubsub.kafka" in pubsub:
        return components
    ordered = components.with_name(components.name + "-sequential")
    ordered.mkdir(exist_ok=True)
    changes = {
        '- name: concurrency\n      value: "32"': '- name: concurrency\n      value: "1"',
        '- name: prefetchCount\n      value: "32"': '- name: prefetchCount\n      value: "1"',
        'value: "parallel"': 'value: "single"',
    }
    for source in components.glob("*.yaml"):
        text = source.read_text()
        for old, new in changes.items():
            text = text.replace(old, new)
        write_resource(ordered / source.name, text)
    if (ordered / "pubsub.yaml").read_text() == pubsub:
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


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time so far of every process in process group ``pgid`` (every
    process the stack starts leads a group of its own), plus what the leader's children that
    have ended took: a PostgreSQL server's backends, or the Erlang VM a RabbitMQ script
    starts, count with their server."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[2]) != pgid:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        if stat.parent.name == str(pgid):
            total += (int(fields[13]) + int(fields[14])) / tick
    return total


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
        self.postgres_port = 0
        self.kafka_port = 0
        self.rabbitmq_port = 0
        # Where the backends keep their data (a restart mid-test starts them on it again).
        self.postgres_data: Path | None = None
        self.rabbitmq_node = ""
        # Run after every process has stopped (temporary data folders).
        self.cleanups: list[Callable[[], None]] = []
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
        while self.cleanups:
            self.cleanups.pop()()

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

    def start_backend(self, profile: str) -> None:
        """Start what ``components/<profile>`` connects to: nothing for the embedded default,
        Redis for ``redis``, PostgreSQL and Kafka for ``postgres-kafka``, PostgreSQL and
        RabbitMQ for ``postgres-rabbitmq``."""
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}: one of {', '.join(PROFILES)}")
        if profile == "redis":
            self.start_redis()
        elif profile == "postgres-kafka":
            self.start_postgres()
            self.start_kafka()
        elif profile == "postgres-rabbitmq":
            self.start_postgres()
            self.start_rabbitmq()

    def restart(self, name: str) -> Proc:
        """Stop the backend process ``name`` (redis, postgres, kafka, rabbitmq) cleanly and
        start it again on the same port and data, as a broker or database restart would."""
        old = next(p for p in self.procs if p.name == name)
        old.stop(grace=60)
        self.procs.remove(old)
        if name == "redis":
            return self.start_redis(self.redis_port)
        if name == "postgres":
            return self.start_postgres(self.postgres_port, data_dir=self.postgres_data)
        if name == "kafka":
            return self.start_kafka(self.kafka_port, data_dir=self.workdir / "kafka-data")
        if name == "rabbitmq":
            return self.start_rabbitmq(self.rabbitmq_port)
        raise ValueError(f"{name} is not a backend this stack restarts")

    def start_rabbitmq(self, port: int | None = None, timeout: float = 90) -> Proc:
        """RabbitMQ (Debian's rabbitmq-server) on 127.0.0.1:``port`` (AMQP; user guest, which
        RabbitMQ admits from loopback only), as a process of this stack with data, logs,
        configuration and Erlang cookie in a folder of its own. Nothing is shared with another
        RabbitMQ or Erlang node on the machine: its own node name, its own Erlang distribution
        port, and an epmd (Erlang's port mapper, which a node otherwise starts as a daemon on
        port 4369 that outlives it) of its own on a free port, run as a process of this stack.
        Started again with the same ``port`` (`restart`), it comes back on the same node and
        data: durable queues and persistent messages are still there."""
        server, epmd = Path("/usr/lib/rabbitmq/bin/rabbitmq-server"), shutil.which("epmd")
        if not server.exists() or epmd is None:
            raise RuntimeError("rabbitmq-server is not installed: apt-get install rabbitmq-server")
        self.rabbitmq_port = port or free_port()
        home = self.workdir / "rabbitmq"
        home.mkdir(exist_ok=True)
        # The node's name is where its data lives: kept in the folder, so that a restart (or
        # the next `up` on the same folder) finds its queues again.
        named = home / "nodename"
        if not named.exists():
            named.write_text(f"rabbit-{uuid.uuid4().hex[:8]}@localhost")
        self.rabbitmq_node = named.read_text().strip()
        write_resource(
            home / "rabbitmq.conf",
            f"listeners.tcp.1 = 127.0.0.1:{self.rabbitmq_port}\n"
            "# one machine, small disks: refuse publishes only below 50 MB free\n"
            "disk_free_limit.absolute = 50MB\n",
        )
        write_resource(home / "enabled_plugins", "[].\n")
        write_resource(home / "rabbitmq-env.conf", "")
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(uuid.uuid4().hex)
            cookie.chmod(0o400)
        mapper = next((p for p in self.procs if p.name == "epmd" and p.alive()), None)
        if mapper is None:  # the first start (a restart keeps the one the node registered in)
            epmd_port = free_port()
            mapper = self._spawn(
                "epmd",
                [epmd, "-port", str(epmd_port), "-address", "127.0.0.1"],
                ports={"epmd": epmd_port},
            )
            self._ready(mapper, lambda: port_open(epmd_port), 20)
        epmd_port, dist_port = mapper.ports["epmd"], free_port()
        erl_env = {"ERL_EPMD_PORT": str(epmd_port), "ERL_EPMD_ADDRESS": "127.0.0.1"}
        env = {
            **erl_env,
            "HOME": str(home),  # the Erlang cookie
            "RABBITMQ_NODENAME": self.rabbitmq_node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.rabbitmq_port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(home / "data"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_LOGS": "-",  # to the stack's log file
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-start_epmd false",
        }
        log = self.workdir / "rabbitmq.log"
        since = log.stat().st_size if log.exists() else 0
        proc = self._spawn("rabbitmq", [str(server)], env=env, ports={"amqp": self.rabbitmq_port})

        def started() -> bool:
            with log.open("rb") as f:
                f.seek(since)
                return b"Server startup complete" in f.read() and port_open(self.rabbitmq_port)

        return self._ready(proc, started, timeout, 0.2)

    def start_postgres(
        self, port: int | None = None, data_dir: Path | None = None, timeout: float = 60
    ) -> Proc:
        """PostgreSQL (Debian's server programs) on 127.0.0.1:``port``, no Unix socket, one
        superuser ``dapr`` that loopback clients reach without a password, database
        ``dapr``. ``data_dir``: a cluster kept between runs (made by initdb when empty);
        default: a new one, removed when the stack closes. As root, the server runs as the
        ``postgres`` user (it refuses to run as root)."""
        initdb, server = postgres_bin("initdb"), postgres_bin("postgres")
        if not server.exists():
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
        self.postgres_port = port or free_port()
        as_user = _postgres_user()
        if data_dir is None:
            if as_user:  # the test's folders are private to root: the server gets its own
                scratch = Path(tempfile.mkdtemp(prefix="devstack-postgres-"))
                self.cleanups.append(lambda: shutil.rmtree(scratch, ignore_errors=True))
                user = pwd.getpwnam("postgres")
                os.chown(scratch, user.pw_uid, user.pw_gid)
                data_dir = scratch / "data"
            else:
                data_dir = self.workdir / "postgres-data"
        self.postgres_data = data_dir
        if not (data_dir / "PG_VERSION").exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            if as_user:
                user = pwd.getpwnam("postgres")
                os.chown(data_dir, user.pw_uid, user.pw_gid)
            made = subprocess.run(
                [
                    *as_user,
                    str(initdb),
                    "--pgdata",
                    str(data_dir),
                    "--username",
                    "dapr",
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C.UTF-8",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if made.returncode != 0:
                raise RuntimeError(f"initdb {data_dir} failed:\n{made.stdout}{made.stderr}")
        proc = self._spawn(
            "postgres",
            [
                *as_user,
                str(server),
                "-D",
                str(data_dir),
                "-p",
                str(self.postgres_port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ],
            ports={"postgres": self.postgres_port},
        )
        self._ready(proc, lambda: port_open(self.postgres_port), timeout)
        # The components' database: created once, on the first start of a cluster.
        wait_until(
            lambda: _postgres_database(self.postgres_port, "dapr"),
            timeout,
            "postgres: database dapr",
            proc.alive,
            interval=0.2,
        )
        return proc

    def start_kafka(
        self, port: int | None = None, data_dir: Path | None = None, timeout: float = 120
    ) -> Proc:
        """A single-node Kafka (KRaft: broker and controller in one JVM, 512 MB heap) on
        127.0.0.1:``port``, from the jars scripts/setup.sh caches. Topics are created on first
        use with 4 partitions, so that a partitionKey decides something. ``data_dir``: a log
        kept between runs (formatted when new); default: a folder of this stack."""
        lib, java = kafka_lib(), shutil.which("java")
        if java is None or not lib.is_dir():
            raise RuntimeError(f"Kafka's jars ({lib}) or java is missing: run scripts/setup.sh")
        self.kafka_port = port or free_port()
        controller = free_port()
        data = data_dir or self.workdir / "kafka-data"
        data.mkdir(parents=True, exist_ok=True)
        home = self.workdir / "kafka"
        home.mkdir(exist_ok=True)
        properties = home / "server.properties"
        properties.write_text(
            _KAFKA_PROPERTIES.format(port=self.kafka_port, controller=controller, data=data)
        )
        log4j = home / "log4j2.yaml"
        log4j.write_text(_KAFKA_LOG4J)
        jvm = [java, "-Xms512m", "-Xmx512m", f"-Dlog4j2.configurationFile={log4j}"]
        classpath = ["-cp", f"{lib}/*"]
        if not (data / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            formatted = subprocess.run(
                [
                    *jvm,
                    *classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "--cluster-id",
                    cluster_id,
                    "--config",
                    str(properties),
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if formatted.returncode != 0:
                raise RuntimeError(f"formatting {data} failed:\n{formatted.stdout[-3000:]}")
        log = self.workdir / "kafka.log"
        since = log.stat().st_size if log.exists() else 0
        proc = self._spawn(
            "kafka",
            [*jvm, *classpath, "kafka.Kafka", str(properties)],
            ports={"kafka": self.kafka_port, "controller": controller},
        )

        def started() -> bool:
            with log.open("rb") as f:
                f.seek(since)
                return b"Kafka Server started" in f.read() and port_open(self.kafka_port)

        return self._ready(proc, started, timeout, 0.1)

    def components(self, profile: str, extra: Mapping[str, str] | None = None) -> Path:
        """A copy of ``components/<profile>`` for this stack (the backends' ports filled in)."""
        dest = self.workdir / f"components-{profile}"
        dest.mkdir(exist_ok=True)
        for source in sorted((COMPONENTS / profile).glob("*.yaml")):
            text = source.read_text()
            if self.redis_port:
                text = text.replace("localhost:6379", f"127.0.0.1:{self.redis_port}")
            if self.postgres_port:
                text = text.replace("localhost:5432", f"127.0.0.1:{self.postgres_port}")
            if self.kafka_port:
                text = text.replace("localhost:9092", f"127.0.0.1:{self.kafka_port}")
            if self.rabbitmq_port:
                text = text.replace("localhost:5672", f"127.0.0.1:{self.rabbitmq_port}")
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

# A single-node Kafka for one machine. Durability: one copy of everything (there is no other
# broker), flushed by the operating system, so a killed broker loses nothing and a power cut
# may lose what was acknowledged in the last seconds.
_KAFKA_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
# Topics appear when first used (Dapr creates none), each with 4 partitions.
auto.create.topics.enable=true
num.partitions=4
# One broker: internal topics with one replica, or they cannot be created; the consumer
# groups' offsets in 4 partitions rather than 50 (made at the first group's join).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# A consumer group forms at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
"""
# Warnings, the start-up line and the group coordinator's rebalances (the default INFO level
# writes every configuration value, 1,200 lines at each start).
_KAFKA_LOG4J = """\
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
      - name: org.apache.kafka.coordinator.group
        level: INFO
"""


def _postgres_user() -> list[str]:
    """The prefix that runs a PostgreSQL program as ``postgres`` when this process is root
    (the parent-death signal set again after the change of user, which clears it)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as error:
        raise RuntimeError(
            "PostgreSQL refuses to run as root and there is no postgres user to run it as "
            "(Debian's postgresql package makes one)"
        ) from error
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] + (
        ["--pdeathsig", "TERM", "--"] if _DIE_WITH_PARENT else ["--"]
    )


def _postgres_database(port: int, name: str) -> bool:
    """Create database ``name`` unless it exists; False while the server cannot answer."""
    psql = shutil.which("psql")
    if psql is None:
        raise RuntimeError("psql is missing: apt-get install postgresql-client")
    base = [psql, "-h", "127.0.0.1", "-p", str(port), "-U", "dapr", "-d", "postgres", "-tAc"]
    found = subprocess.run(
        [*base, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if found.returncode != 0:
        return False
    if found.stdout.strip() == "1":
        return True
    made = subprocess.run(
        [*base, f"CREATE DATABASE {name}"], capture_output=True, timeout=10, check=False
    )
    return made.returncode == 0


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
    """Run placement and scheduler (and the profile's backends) until Ctrl+C or SIGTERM."""
    stop = {"now": False}

    def on_signal(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workdir = Path(args.workdir).resolve()
    profile = "redis" if args.redis else args.profile
    with control_plane(workdir, args.placement_port, args.scheduler_port) as stack:
        # The backends keep their data in the work folder between runs, as Redis does.
        if profile == "redis":
            stack.start_redis(args.redis_port)
        elif profile == "postgres-kafka":
            started = time.monotonic()
            stack.start_postgres(args.postgres_port, data_dir=workdir / "postgres-data")
            postgres_took = time.monotonic() - started
            started = time.monotonic()
            stack.start_kafka(args.kafka_port, data_dir=workdir / "kafka-data")
            print(
                f"[devstack] postgres ready in {postgres_took:.1f}s, "
                f"kafka in {time.monotonic() - started:.1f}s",
                flush=True,
            )
        elif profile == "postgres-rabbitmq":
            stack.start_postgres(args.postgres_port, data_dir=workdir / "postgres-data")
            # RabbitMQ keeps its node, data and cookie in workdir/rabbitmq between runs.
            stack.start_rabbitmq(args.rabbitmq_port or None)
        ports = {
            "PLACEMENT_PORT": stack.placement_port,
            "SCHEDULER_PORT": stack.scheduler_port,
            "REDIS_PORT": stack.redis_port,
            "POSTGRES_PORT": stack.postgres_port,
            "KAFKA_PORT": stack.kafka_port,
            "RABBITMQ_PORT": stack.rabbitmq_port,
        }
        print(
            "[devstack] "
            + ", ".join(
                f"{name.removesuffix('_PORT').lower()} on {port}"
                for name, port in ports.items()
                if port
            )
            + f"; data and logs in {workdir}",
            flush=True,
        )
        if args.ready_file:
            # KEY=port lines a shell can source (scripts/run.sh fills in the components).
            write_resource(  # in one rename: a reader never sees it half-written
                Path(args.ready_file),
                "".join(f"{name}={port}\n" for name, port in ports.items() if port),
            )
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
    up = sub.add_parser("up", help="run placement, scheduler and a profile's backends until Ctrl+C")
    up.add_argument("--placement-port", type=int, default=int(os.environ.get("PLACEMENT_PORT", 0)))
    up.add_argument("--scheduler-port", type=int, default=int(os.environ.get("SCHEDULER_PORT", 0)))
    up.add_argument(
        "--profile",
        choices=PROFILES,
        default="default",
        help="start the backends of components/<profile> (default: none)",
    )
    up.add_argument("--redis", action="store_true", help="the same as --profile redis")
    up.add_argument("--redis-port", type=int, default=int(os.environ.get("REDIS_PORT", 0)))
    up.add_argument("--postgres-port", type=int, default=int(os.environ.get("POSTGRES_PORT", 0)))
    up.add_argument("--kafka-port", type=int, default=int(os.environ.get("KAFKA_PORT", 0)))
    up.add_argument("--rabbitmq-port", type=int, default=int(os.environ.get("RABBITMQ_PORT", 0)))
    up.add_argument("--workdir", default=str(PROJECT / ".data"))
    up.add_argument("--ready-file", help="written once everything is healthy: KEY=port lines")
    args = parser.parse_args(argv)
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
