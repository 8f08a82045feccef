"""The worker's image (Containerfile), built and run with podman against the test stack.

The base is built from Debian's packages (scripts/containers.py: debootstrap, cached), the
image with podman's layer cache. The container runs as the Deployment runs it: uid 10001, a
read-only root with a /tmp of its own, the image's entrypoint (tini, then the worker), the
host's network (its sidecar, a daprd of the test stack, is on loopback). A workflow completes
from a message; SIGTERM drains it and it exits 0; the health endpoints answer as it starts and
stops. The example of users' own workflows (examples/custom-image) is built FROM the image
and run the same way, with a writable root to show what the worker writes: nothing outside
/tmp.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from scripts import containers, devstack
from tests.integration.conftest import Observer, unique

pytestmark = [pytest.mark.integration, pytest.mark.container]

# Where podman itself mounts files into a container (the directories show as changed).
_PODMAN_MOUNT_POINTS = frozenset(
    {
        "/etc",
        "/etc/hosts",
        "/etc/hostname",
        "/etc/resolv.conf",
        "/run",
        "/run/.containerenv",
        "/tmp",
    }
)
EXAMPLE = devstack.PROJECT / "examples" / "custom-image"


@pytest.fixture(scope="module")
def image() -> str:
    reason = containers.available()
    if reason:
        pytest.fail(f"the container tests cannot run: {reason}")
    tag, seconds = containers.worker_image()
    print(f"[containers] {tag} built in {seconds:.1f}s, {containers.image_size(tag) / 1e6:.0f} MB")
    return tag


def probe(url: str) -> int | None:
    """The HTTP status of GET ``url``; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return None


def exit_code(name: str, timeout: float) -> int:
    done = containers.podman("wait", name, timeout=timeout)
    return int(done.stdout.strip().splitlines()[-1])


def worker_env(sidecar: devstack.Sidecar, prefix: str, health_port: int) -> dict[str, str]:
    return {
        "DAPR_GRPC_PORT": str(sidecar.grpc_port),
        "DAPR_HTTP_PORT": str(sidecar.http_port),
        "WORKER_APP_ID": sidecar.app_id,
        "WORKER_APP_PORT": str(sidecar.app_port),
        "WORKER_HEALTH_ENABLED": "true",
        "WORKER_HEALTH_PORT": str(health_port),
        "WORKER_CLAIM_LEASE_SECONDS": "5",
        **{
            f"WORKER_{t.upper()}_TOPIC": f"{prefix}workflow.{t}"
            for t in ("start", "approval", "control", "status")
        },
    }


@pytest.fixture
def sidecar(stack: devstack.Stack, request: pytest.FixtureRequest) -> Iterator[devstack.Sidecar]:
    """A daprd for the container's worker, probing its health as the injector's would."""
    prefix = request.param
    app_id = f"{prefix}-worker"
    running = stack.start_sidecar(
        app_id,
        stack.components("redis"),
        app_port=devstack.free_port(),
        name=f"daprd-{app_id}-{unique('c')}",
        app_health_probe_seconds=1,
    )
    yield running
    running.proc.stop()


def wait_ready(name: str, health: str, timeout: float = 120) -> None:
    def ready() -> bool:
        if containers.podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() != (
            "true"
        ):
            raise AssertionError(f"the container exited:\n{containers.logs(name)[-4000:]}")
        return "worker ready" in containers.logs(name) and probe(f"{health}/readyz") == 200

    try:
        devstack.wait_until(ready, timeout, f"container {name}", interval=0.2)
    except TimeoutError:
        print(containers.logs(name)[-4000:])
        raise


@pytest.mark.parametrize("sidecar", ["image"], indirect=True)
def test_the_image_runs_a_workflow_and_drains_on_sigterm(
    image: str, sidecar: devstack.Sidecar, observer: Observer
) -> None:
    health_port = devstack.free_port()
    health = f"http://127.0.0.1:{health_port}"
    name = unique("dww-image")
    status_topic = "image.workflow.status"
    with containers.container(
        image, name=name, env=worker_env(sidecar, "image.", health_port)
    ) as running:
        user = containers.podman("exec", running, "id", "-u").stdout.strip()
        assert user == "10001"
        pid1 = containers.podman("exec", running, "cat", "/proc/1/cmdline").stdout
        assert pid1.split("\0")[0] == "tini"
        # Live before it is ready (the startup probe's meaning), not ready until subscribed.
        devstack.wait_until(lambda: probe(f"{health}/livez") == 200, 120, "livez answers")
        wait_ready(running, health)
        assert probe(f"{health}/livez") == 200

        instance_id = unique("img")
        order = {"order_id": instance_id, "amount": 10}
        observer.publish(
            "image.workflow.start",
            {"workflow": "approval_workflow", "instance_id": instance_id, "input": order},
        )
        observer.wait_for(
            "completed",
            lambda: [
                e
                for e in observer.for_instance(instance_id, status_topic)
                if e.data["event"] == "completed"
            ],
            timeout=60,
        )

        # SIGTERM to the container (to tini, PID 1): the worker drains, then exits 0.
        began = time.monotonic()
        containers.podman("kill", "--signal", "TERM", running)
        statuses = set()
        while probe(f"{health}/readyz") is not None and time.monotonic() - began < 30:
            statuses.add(probe(f"{health}/readyz"))
        code = exit_code(running, 60)
        drained = time.monotonic() - began
        log = containers.logs(running)
        print(f"[containers] SIGTERM to exit: {drained:.1f}s; readyz while stopping: {statuses}")
        assert code == 0, log[-3000:]
        assert "received SIGTERM: shutting down" in log
        assert "worker stopped" in log
        assert 200 not in statuses - {None}
        assert drained < 30


@pytest.mark.parametrize("sidecar", ["custom"], indirect=True)
def test_users_own_workflows_in_an_image_of_their_own(
    image: str, sidecar: devstack.Sidecar, observer: Observer
) -> None:
    """examples/custom-image: FROM the worker's image, pip install a package of workflows,
    WORKER_WORKFLOW_MODULES. Its workflow completes from a message on workflow.start."""
    tag = "localhost/my-flows-worker:0.1.0"
    seconds = containers.build(tag, context=EXAMPLE, build_args={"WORKER_IMAGE": image})
    print(f"[containers] {tag} built in {seconds:.1f}s")
    health_port = devstack.free_port()
    name = unique("dww-custom")
    with containers.container(
        tag, name=name, env=worker_env(sidecar, "custom.", health_port), read_only=False
    ) as running:
        wait_ready(running, f"http://127.0.0.1:{health_port}")
        assert "invoice_workflow" in containers.logs(running)
        instance_id = unique("invoice")
        observer.publish(
            "custom.workflow.start",
            {
                "workflow": "invoice_workflow",
                "instance_id": instance_id,
                "input": {"order_id": instance_id, "amount": 100},
            },
        )
        [done] = observer.wait_for(
            "completed",
            lambda: [
                e
                for e in observer.for_instance(instance_id, "custom.workflow.status")
                if e.data["event"] == "completed"
            ],
            timeout=60,
        )
        assert done.data["output"] == {"order_id": instance_id, "amount": 100.0, "total": 120.0}
        containers.podman("kill", "--signal", "TERM", running)
        assert exit_code(running, 60) == 0
        # What it wrote in its root filesystem, a workflow run and a stop later: only /tmp.
        written = [
            change
            for change in containers.changes(running)
            if change.split()[-1] not in _PODMAN_MOUNT_POINTS
            and not change.split()[-1].startswith("/tmp/")
        ]
        assert written == [], written
