"""How fast the console's instance list answers with many instances (docs/operate/console.md).

On a fresh local stack (the shared profile: Redis state store and pub/sub), one
worker with its console (the watch off, so that only the console reads the sidecar), and
``--instances`` instances started straight through the sidecar (70 % finish at once, 30 % wait
for an approval). Once the console lists them all, each list view below is requested
``--requests`` times, one after the other, as a signed-in operator would (the whole page, HTML
or JSON); their latencies' p50/p95/p99 are printed and written to ``--out``.

    .venv/bin/python scripts/bench_console.py                 # 10,000 instances (~4 min)
    .venv/bin/python scripts/bench_console.py --instances 500 --requests 50   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from dapr.ext.workflow import DaprWorkflowClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import devstack

TOKEN = "bench-console-operator-token"
# The app-id the shared profile lets publish on workflow.status (components/redis scopes it):
# under any other id every completion report is refused and retried, and the stack bogs down.
APP_ID = "workflow-worker"
VIEWS = {
    "page: running approvals, page 1": "/?workflow=approval_workflow&status=RUNNING",
    "page: id contains, sorted by id": "/?q=bench-12&sort=id&order=asc",
    "page: finished in the last hour, page 20": "/?status=finished&newer_than=1h&page=20",
    "page: everything, newest first": "/",
    "API: completed, 100 a page": "/api/instances?status=COMPLETED&per_page=100",
}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def build_parser() -> argparse.ArgumentParser:
    """The command line this script takes (the docs' examples are checked against it)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=devstack.PROJECT / "docs" / "console")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    with (
        tempfile.TemporaryDirectory(prefix="bench-console-") as tmp,
        devstack.Stack(Path(tmp)) as stack,
    ):
        stack.start_placement()
        stack.start_scheduler()
        stack.start_redis()
        port = devstack.free_port()
        workdir = Path(tmp) / "worker"
        workdir.mkdir()
        app_port = devstack.free_port()
        sidecar = stack.start_sidecar(
            APP_ID, stack.components("redis"), app_port=app_port, cwd=workdir
        )
        users = [{"name": "bench", "role": "operator", "token": TOKEN}]
        stack.start_worker(
            sidecar,
            name="worker",
            env={
                "WORKER_APP_ID": APP_ID,
                "WORKER_WATCH_ENABLED": "false",
                "WORKER_CONSOLE_ENABLED": "true",
                "WORKER_CONSOLE_PORT": str(port),
                "WORKER_CONSOLE_USERS": json.dumps(users),
                "WORKER_CONSOLE_REFRESH_SECONDS": "5",
            },
        )
        client = DaprWorkflowClient(host="127.0.0.1", port=str(sidecar.grpc_port))

        def start(n: int) -> None:
            waiting = n % 10 < 3
            order = {
                "order_id": f"bench-{n}",
                "amount": 5000 if waiting else 10,
                "approval_timeout_seconds": 86_400,
            }
            for attempt in range(5):  # the sidecar may shed load for a moment
                try:
                    client.schedule_new_workflow(
                        "approval_workflow", input=order, instance_id=f"bench-{n:05d}"
                    )
                    return
                except Exception:
                    if attempt == 4:
                        raise
                    time.sleep(1)

        began = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            for done, _ in enumerate(pool.map(start, range(args.instances)), 1):
                if done % 1000 == 0:
                    print(f"[bench] started {done} ({time.monotonic() - began:.0f}s)", flush=True)
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            listed = http.get("/api/instances?per_page=1").json()
            settled = listed["counts"]["COMPLETED"] >= args.instances * 0.7 - 1
            if listed["loaded"] and listed["instances"] >= args.instances and settled:
                break
            time.sleep(2)
        else:
            raise SystemExit(f"the console did not list every instance: {listed}")
        print(f"[bench] listed {listed['instances']} ({time.monotonic() - began:.0f}s)")

        results = []
        for name, path in VIEWS.items():
            http.get(path)  # warm
            times = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                response = http.get(path)
                response.read()
                times.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, response.status_code
            row = {
                "view": name,
                "path": path,
                "bytes": len(response.content),
                "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(percentile(times, 95), 1),
                "p99_ms": round(percentile(times, 99), 1),
            }
            results.append(row)
            print(f"[bench] {name}: p50 {row['p50_ms']} p95 {row['p95_ms']} p99 {row['p99_ms']} ms")
        client.close()
        http.close()

    machine = (
        f"{os.cpu_count()} cores, Linux {platform.machine()}, Python {platform.python_version()}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "instances": args.instances,
        "requests": args.requests,
        "machine": machine,
        "results": results,
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"{args.instances} instances, {args.requests} requests per view, one after the other. "
        f"Machine: {machine}.",
        "",
        "| view | request | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|",
        *(
            f"| {r['view']} | `{r['path']}` | {r['p50_ms']} | **{r['p95_ms']}** | {r['p99_ms']} |"
            for r in results
        ),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
