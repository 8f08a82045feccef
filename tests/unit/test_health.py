"""The health add-on's endpoints (worker.health) over real HTTP, on a free port."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from typing import Any, cast

from tests.unit.fakes import FakeClock
from tests.unit.test_liveness import deadline
from worker.health import Health
from worker.liveness import Liveness
from worker.service import Parts


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def test_readyz_follows_the_ready_event_and_livez_the_liveness() -> None:
    ready = threading.Event()
    clock = FakeClock()
    live = Liveness(60, clock=clock.monotonic)
    parts = cast(Any, Parts)(
        None, None, None, None, None, None, threading.Event(), ready=ready, liveness=live
    )
    health = Health("127.0.0.1", 0)
    health.start(parts)
    try:
        assert get(f"{health.url}/readyz") == (503, "not ready\n")
        assert get(f"{health.url}/livez") == (200, "live\n")
        ready.set()
        assert get(f"{health.url}/readyz") == (200, "ready\n")
        live.failed("m1", deadline())
        clock.sleep(30)
        live.failed("m1", deadline())
        clock.sleep(30)
        live.failed("m1", deadline())
        status, body = get(f"{health.url}/livez")
        assert status == 503 and body.startswith("not live: m1: every try for 60s (3 tries)")
        ready.clear()  # stopping
        assert get(f"{health.url}/readyz")[0] == 503
        assert get(f"{health.url}/nope")[0] == 404
    finally:
        health.stop()
