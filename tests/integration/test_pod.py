"""The Deployment's pod runs for real: `podman kube play` of its template (rendered by the
pinned kustomize from deploy/overlays/redis) with daprd injected as Dapr's sidecar injector
would (scripts/pod.py), against the test stack's placement, scheduler and Redis.

A start and its approval published from outside (the observer's sidecar) reach `completed`.
Then the pod is stopped as Kubernetes stops it, SIGTERM to the worker and daprd at once
(`podman pod stop`), in the middle of a batch of starts still being published, and started
again: every start of the batch reaches `completed`, once. Measured: the pod's ready time
(kube play to /readyz 200) and its drain (SIGTERM to both containers gone).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from scripts import containers, devstack, pod
from tests.deploy.schemas import render
from tests.integration.conftest import Observer, unique
from tests.integration.test_container import probe

pytestmark = [pytest.mark.integration, pytest.mark.container]

OVERLAY = devstack.PROJECT / "deploy" / "overlays" / "redis"
APP_ID = "pod-worker"  # the manifests' workflow-worker, renamed: the test stack runs that one
PREFIX = "pod."
STATUS = f"{PREFIX}workflow.status"
BATCH = 40


def final_events(observer: Observer, instance_id: str, event: str) -> set[str]:
    """The distinct CloudEvent ids of ``event`` for ``instance_id`` (a redelivered event
    keeps its id)."""
    return {e.id for e in observer.for_instance(instance_id, STATUS) if e.data["event"] == event}


@pytest.fixture
def sidecar_dir() -> Iterator[Path]:
    """daprd's files for the pod, where its uid (65532) can read them (not under /root)."""
    path = Path(tempfile.mkdtemp(prefix="dww-pod-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def logs_of(name: str) -> str:
    return "\n".join(
        f"----- {container}\n{containers.logs(f'{name}-{container}')[-4000:]}"
        for container in ("worker", "daprd")
    )


def test_the_deployments_pod_runs_and_stops_without_losing_messages(
    stack: devstack.Stack, observer: Observer, sidecar_dir: Path, tmp_path: Path
) -> None:
    reason = containers.available()
    if reason:
        pytest.fail(f"the pod test cannot run: {reason}")
    image, _ = containers.worker_image()
    base = containers.base_image()
    docs = [dict(d) for d in render(OVERLAY)]
    pod.sidecar_files(
        docs,
        sidecar_dir,
        devstack.dapr_bin("daprd"),
        f"{pod.HOST}:{stack.redis_port}",
        APP_ID,
        PREFIX,
    )
    token = "pod-test-operator-token"
    users = [
        {
            "name": "ana",
            "role": "operator",
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
        }
    ]
    health_port = devstack.free_port()
    name = unique("dww-pod")
    manifest = pod.pod_manifest(
        docs,
        name=name,
        worker_image=image,
        sidecar_image=base,
        sidecar_dir=sidecar_dir,
        placement=f"{pod.HOST}:{stack.placement_port}",
        scheduler=f"{pod.HOST}:{stack.scheduler_port}",
        secrets={
            f"{APP_ID}-console": {"users": json.dumps(users), "session-secret": "s" * 64},
        },
        app_id=APP_ID,
        topic_prefix=PREFIX,
        health_host_port=health_port,
    )
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    readyz = f"http://127.0.0.1:{health_port}/readyz"

    began = time.monotonic()
    containers.podman("kube", "play", "--network", pod.NETWORK, str(path), timeout=300)
    try:
        try:
            devstack.wait_until(lambda: probe(readyz) == 200, 180, "the pod's /readyz")
        except TimeoutError:
            print(logs_of(name))
            raise
        ready = time.monotonic() - began
        print(f"[pod] kube play to /readyz 200: {ready:.1f}s")

        # A start that waits for a decision, and its approval, from outside the pod.
        order = unique("pod-order")
        observer.publish(
            f"{PREFIX}workflow.start",
            {
                "workflow": "approval_workflow",
                "instance_id": order,
                "input": {"order_id": order, "amount": 5000},
            },
        )
        observer.wait_for(
            "started", lambda: [e for e in observer.for_instance(order, STATUS)], timeout=60
        )
        observer.publish(
            f"{PREFIX}workflow.approval",
            {"instance_id": order, "data": {"approved": True, "approver": "ana"}},
        )
        observer.wait_for(
            "completed",
            lambda: [
                e for e in observer.for_instance(order, STATUS) if e.data["event"] == "completed"
            ],
            timeout=60,
        )

        # A batch still being published when the pod is stopped, SIGTERM to both at once.
        batch = [unique("pod-batch") for _ in range(BATCH)]

        def publish_batch() -> None:
            for instance_id in batch:
                observer.publish(
                    f"{PREFIX}workflow.start",
                    {
                        "workflow": "approval_workflow",
                        "instance_id": instance_id,
                        "input": {"order_id": instance_id, "amount": 10},
                    },
                )
                time.sleep(0.05)  # a steady stream, not a deadline: ~2 s for the batch

        publisher = threading.Thread(target=publish_batch, name="batch")
        publisher.start()
        try:
            observer.wait_for(
                "the batch under way",
                lambda: [e for i in batch[:5] for e in observer.for_instance(i, STATUS)],
                count=3,
                timeout=60,
            )
            stopping = time.monotonic()
            containers.podman("pod", "stop", "-t", "60", name, timeout=120)
            drained = time.monotonic() - stopping
        finally:
            publisher.join(60)
        handled_before = sum(1 for i in batch if final_events(observer, i, "completed"))
        worker_log = containers.logs(f"{name}-worker")
        codes = {
            c: containers.podman(
                "inspect", "--format", "{{.State.ExitCode}}", f"{name}-{c}"
            ).stdout.strip()
            for c in ("worker", "daprd")
        }
        print(
            f"[pod] SIGTERM to both containers gone: {drained:.1f}s; exit codes {codes}; "
            f"{handled_before} of {BATCH} completed before the stop"
        )
        assert "received SIGTERM: shutting down" in worker_log, logs_of(name)
        assert "worker stopped" in worker_log
        assert codes["worker"] == "0"
        assert drained < 60  # within terminationGracePeriodSeconds: nothing was SIGKILLed

        restarted = time.monotonic()
        containers.podman("pod", "start", name, timeout=120)
        devstack.wait_until(lambda: probe(readyz) == 200, 180, "the pod's /readyz, again")
        print(f"[pod] pod start to /readyz 200: {time.monotonic() - restarted:.1f}s")
        devstack.wait_until(
            lambda: all(final_events(observer, i, "completed") for i in batch),
            180,
            "every start of the batch completed",
        )
        for instance_id in batch:
            assert len(final_events(observer, instance_id, "completed")) == 1, instance_id
            assert len(final_events(observer, instance_id, "started")) == 1, instance_id
            assert not final_events(observer, instance_id, "rejected"), instance_id
    except BaseException:
        print(logs_of(name))
        raise
    finally:
        containers.podman("kube", "down", str(path), check=False, timeout=120)
        containers.podman("pod", "rm", "-f", name, check=False, timeout=120)
