"""The test stack's ports: never the same one twice in a run, never one that is taken."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from scripts import devstack


def test_free_ports_never_repeat_within_a_run() -> None:
    ports = [devstack.free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)


def test_free_ports_stay_out_of_the_kernels_ephemeral_range() -> None:
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    low, high = (int(n) for n in ephemeral)
    ports = {devstack.free_port() for _ in range(200)}
    assert not {p for p in ports if low <= p <= high}


def test_a_port_someone_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(devstack, "_PORTS", range(port, port + 1))
        with pytest.raises(RuntimeError, match="no free port"):
            devstack.free_port()


def test_a_port_handed_out_is_not_handed_out_again_before_it_is_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = devstack.free_port()
    monkeypatch.setattr(devstack, "_PORTS", range(port, port + 1))
    monkeypatch.setattr(devstack, "_handed_out", set())
    assert devstack.free_port() == port  # nobody has bound it
    with pytest.raises(RuntimeError, match="no free port"):
        devstack.free_port()  # still nobody has, but it is handed out
