"""No multicast: the sidecars the project starts resolve names with the Kubernetes resolver
(components/config.yaml), never with daprd's self-hosted default, mDNS, which announces every
sidecar on the local network from UDP port 5353."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from scripts import devstack
from tests.integration.conftest import Observer, Worker

MDNS_PORT = 5353


def _local_ports(pid: int, protocol: str) -> set[int]:
    """Local ports of the ``protocol`` (tcp or udp, IPv4 and IPv6) sockets that ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in (f"/proc/{pid}/net/{protocol}", f"/proc/{pid}/net/{protocol}6"):
        with contextlib.suppress(FileNotFoundError):  # no IPv6
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()  # sl local_address rem_address st ... uid timeout inode
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_sidecars_resolve_names_without_multicast(
    stack: devstack.Stack, worker: Worker, observer: Observer
) -> None:
    sidecars = [p for p in stack.procs if p.name.startswith("daprd-") and p.alive()]
    assert len(sidecars) >= 2, [p.name for p in stack.procs]  # the worker's and the observer's
    for proc in sidecars:
        log = proc.log.read_text(errors="replace")
        assert "Initialized name resolution to kubernetes" in log, proc.name
        assert "name resolution to mdns" not in log, proc.name
        assert "local service entry announced" not in log, proc.name  # mDNS's announcement
        pid = proc.popen.pid
        assert proc.ports["grpc"] in _local_ports(pid, "tcp"), f"{proc.name}: sockets unread"
        assert MDNS_PORT not in _local_ports(pid, "udp"), f"{proc.name} holds UDP {MDNS_PORT}"


def test_the_run_file_gives_its_sidecar_the_same_configuration() -> None:
    """``dapr run -f .`` (and scripts/run.sh's copy of dapr.yaml) use components/config.yaml."""
    run_file = (devstack.PROJECT / "dapr.yaml").read_text()
    assert "configFilePath: ./components/config.yaml" in run_file
    assert "appDirPath: .\n" in run_file  # the path above is relative to it
    config = devstack.CONFIG.read_text()
    assert "nameResolution:\n    component: kubernetes\n" in config
