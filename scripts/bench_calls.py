"""Where a start's time goes: the sidecar's rate for each call the worker's path makes.

On a fresh stack per profile, N calls of each kind at the worker's concurrency, one kind at a
time. From those rates follows an upper bound for worker/direct: a start through the worker
costs the sidecar the input message (publish + delivery), the claim, the existence check, the
start itself, the `started` event (publish + delivery) and the done record (and, on the
embedded default, the journal slot, in the in-memory records store); a direct start
costs only the start. Even a worker that did nothing else cannot beat the "pub/sub legs only"
bound.

  .venv/bin/python scripts/bench_calls.py                  # N = 1000, both profiles
  .venv/bin/python scripts/bench_calls.py --n 20 --profiles default --out /tmp/x   # a smoke
Results: OUT/calls.json and OUT/calls.md (default OUT: docs/benchmark).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dapr.clients import DaprClient
from dapr.clients.grpc._state import Concurrency, StateOptions
from dapr.conf import settings as dapr_settings

from scripts import devstack
from scripts.benchmark import (
    Host,
    _order,
    _parallel,
    fresh_host,
    machine_description,
    write_report,
)

# The worker's path for one start, as (call, how many times), per profile. The embedded
# default keeps its records in the sidecar's memory (the `idempotency` store) and journals each
# delivery before answering it (worker.intake).
_PATH = {
    "publish": 2,  # the start message in, the `started` event out (each with its delivery)
    "save first-write": 1,  # the claim
    "get instance": 1,  # does it exist, and whose is it
    "start": 1,
    "save": 1,  # the done record
}
WORKER_PATH = {"redis": _PATH, "default": {**_PATH, "save": 2}}  # + the journal slot
# Where the worker keeps its records, per profile (worker.sidecar.records_store).
RECORDS_STORE = {"redis": "statestore", "default": "idempotency"}


def _rate(host: Host, n: int, call: Callable[[int], object]) -> float:
    began = time.perf_counter()
    _parallel(range(n), call)
    return n / (time.perf_counter() - began)


def measure(host: Host, n: int, store: str) -> dict[str, float]:
    """Calls per second, per kind, through the host's sidecar (records in ``store``)."""
    # The SDK's health check reads these settings (filled from the environment at import).
    vars(dapr_settings).update(
        DAPR_HTTP_PORT=host.sidecar.http_port, DAPR_GRPC_PORT=host.sidecar.grpc_port
    )
    state = DaprClient(f"127.0.0.1:{host.sidecar.grpc_port}")
    first_write = StateOptions(concurrency=Concurrency.first_write)
    claims = [f"bench-claim-{uuid.uuid4().hex}" for _ in range(n)]
    records = [f"bench-done-{uuid.uuid4().hex}" for _ in range(n)]  # other keys, as the worker's
    ids = [f"calls-{uuid.uuid4().hex[:12]}" for _ in range(n)]
    try:
        return {
            "save first-write": _rate(
                host,
                n,
                lambda i: state.save_state(store, claims[i], "{}", options=first_write),
            ),
            "save": _rate(host, n, lambda i: state.save_state(store, records[i], "{}")),
            "publish": _rate(
                host, n, lambda i: host.publish("bench.noop", {"n": i}, str(uuid.uuid4()))
            ),
            "start": _rate(
                host,
                n,
                lambda i: host.client.schedule_new_workflow(
                    "approval_workflow", input=_order(ids[i]), instance_id=ids[i]
                ),
            ),
            "get instance": _rate(
                host, n, lambda i: host.client.get_workflow_state(ids[i], fetch_payloads=True)
            ),
        }
    finally:
        state.close()


def bounds(rates: dict[str, float], profile: str) -> dict[str, float]:
    """Upper bounds for worker/direct, from the sidecar's cost (1/rate) of each call."""
    cost = {call: 1 / rate for call, rate in rates.items()}
    path = sum(cost[call] * times for call, times in WORKER_PATH[profile].items())
    legs = cost["start"] + WORKER_PATH[profile]["publish"] * cost["publish"]
    check = cost["start"] + cost["get instance"]
    return {
        "worker_path": cost["start"] / path,
        "pubsub_legs_only": cost["start"] / legs,
        "existence_check_only": cost["start"] / check,
    }


def markdown(results: list[dict[str, Any]], machine: str, command: str) -> str:
    calls = list(results[0]["rates"])
    lines = [
        f"Machine: {machine}. Command: `{command}`. Calls per second through one sidecar, "
        f"{results[0]['n']} of each at the worker's concurrency.",
        "",
        "| profile | "
        + " | ".join(calls)
        + " | bound: worker path | bound: pub/sub legs only | bound: existence check only |",
        "|---|" + "---|" * (len(calls) + 3),
    ]
    for r in results:
        rates = " | ".join(f"{r['rates'][c]:.0f}" for c in calls)
        b = r["bounds"]
        lines.append(
            f"| {r['profile']} | {rates} | {b['worker_path']:.2f} | {b['pubsub_legs_only']:.2f} "
            f"| {b['existence_check_only']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line this script takes (the docs' examples are checked against it)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profiles", nargs="+", default=["default", "redis"], choices=["default", "redis"]
    )
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=devstack.PROJECT / "docs" / "benchmark")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/bench_calls.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as tmp:
        for profile in args.profiles:
            with fresh_host(profile, Path(tmp) / profile) as host:
                rates = measure(host, args.n, RECORDS_STORE[profile])
            results.append(
                {"profile": profile, "n": args.n, "rates": rates, "bounds": bounds(rates, profile)}
            )
            print(f"{profile}: {json.dumps(results[-1])}", flush=True)
    machine = machine_description()
    write_report(
        args.out / "calls",
        {"machine": machine, "command": command, "results": results},
        markdown(results, machine, command),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
