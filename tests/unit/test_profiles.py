"""The two profiles: what each sets for the worker, kept in step between dapr.yaml (what
`scripts/run.sh` runs), the components and scripts/devstack.py (what the benchmark and the
tests run)."""

from __future__ import annotations

import re
import subprocess

from scripts import devstack


def _components(profile: str) -> dict[str, str]:
    """name -> type of the profile's components (resiliency policies and the like left out)."""
    found = {}
    for path in sorted((devstack.COMPONENTS / profile).glob("*.yaml")):
        text = path.read_text()
        if not re.search(r"^kind: Component$", text, re.MULTILINE):
            continue
        name = re.search(r"^metadata:\n  name: (\S+)$", text, re.MULTILINE)
        kind = re.search(r"^  type: (\S+)$", text, re.MULTILINE)
        assert name is not None and kind is not None, path
        found[name.group(1)] = kind.group(1)
    return found


def _run_env(run_file: str) -> dict[str, str]:
    return dict(re.findall(r'^      (WORKER_[A-Z_]+): "([^"]*)"$', run_file, re.MULTILINE))


def test_the_embedded_default_keeps_idempotency_records_in_the_sidecars_memory() -> None:
    store = devstack.PROFILE_ENV["default"]["WORKER_IDEMPOTENCY_STORE"]
    components = _components("default")
    assert components[store] == "state.in-memory"
    assert components["statestore"] == "state.sqlite"  # workflow state stays durable


def test_the_shared_profile_keeps_them_in_redis() -> None:
    assert "WORKER_IDEMPOTENCY_STORE" not in devstack.PROFILE_ENV["redis"]
    assert _components("redis")["statestore"] == "state.redis"


def test_run_sh_sets_for_each_profile_what_the_benchmark_and_tests_set() -> None:
    run_file = (devstack.PROJECT / "dapr.yaml").read_text()
    env = _run_env(run_file)
    for name, value in devstack.PROFILE_ENV["default"].items():
        assert env[name] == value
    # scripts/run.sh --redis runs a copy of dapr.yaml without the default profile's line.
    script = (devstack.PROJECT / "scripts" / "run.sh").read_text()
    found = re.search(r'\[ "\$profile" = redis \] && records="([^"]+)"', script)
    assert found is not None
    redis_run_file = subprocess.run(
        ["sed", "-e", found.group(1)], input=run_file, capture_output=True, text=True, check=True
    ).stdout
    redis_env = _run_env(redis_run_file)
    assert "WORKER_IDEMPOTENCY_STORE" not in redis_env
    assert {k: v for k, v in env.items() if k != "WORKER_IDEMPOTENCY_STORE"} == redis_env
