"""Builds and runs the worker's image with podman, as the tests do (and as a user can, here).

No container registry is reachable on the machines this project is tested on, so the image's
``BASE`` is built from Debian's own packages: ``debootstrap --variant=minbase`` with python3,
python3-venv, ca-certificates and tini, without apt's caches and the docs, imported with
``podman import``. Its root tree is cached as a tarball under
``~/.cache/dapr-workflow-worker/`` keyed by its inputs (suite and packages): about 110 s the
first time, a second or two after. Image builds use podman's layer cache.

Podman on these machines runs as root with ``--cgroup-manager cgroupfs --runtime runc`` and a
containers.conf with ``default_ulimits = []`` (``CONTAINERS_CONF``): `podman()` adds them.

    python -m scripts.containers base        # the base image (cached)
    python -m scripts.containers build       # the worker's image on that base (timed)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dapr-workflow-worker"

SUITE = "bookworm"  # Debian 12: python3 3.11.2, the project's requires-python >= 3.11
PACKAGES = ("python3", "python3-venv", "ca-certificates", "tini")
# Trimmed from the tree: apt's caches and lists, docs, man pages, locales (~150 MB).
_TRIM = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/log",
)
_BASE_RECIPE = 1  # bump when the recipe above changes in a way its inputs do not show
BASE_REPO = "localhost/dapr-workflow-worker-base"
IMAGE_REPO = "localhost/dapr-workflow-worker"


def project_version() -> str:
    found = re.search(r'^version = "([^"]+)"', (PROJECT / "pyproject.toml").read_text(), re.M)
    if found is None:
        raise RuntimeError("no version in pyproject.toml")
    return found.group(1)


def available() -> str | None:
    """Why the container tests cannot run here (None: they can)."""
    for tool in ("podman", "debootstrap", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    if os.geteuid() != 0:
        return "podman and debootstrap need root here"
    return None


def _containers_conf() -> Path:
    conf = CACHE / "containers.conf"
    text = "[containers]\ndefault_ulimits = []\n"
    if not conf.exists() or conf.read_text() != text:
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(text)
    return conf


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(_containers_conf())}


# Global options for this machine (see the module's docstring). PODMAN_STORAGE_DRIVER=vfs
# switches the storage driver (overlay by default).
def podman_argv(*args: str) -> list[str]:
    argv = ["podman", "--cgroup-manager", "cgroupfs", "--runtime", "runc"]
    if os.environ.get("PODMAN_STORAGE_DRIVER"):
        argv += ["--storage-driver", os.environ["PODMAN_STORAGE_DRIVER"]]
    return [*argv, *args]


def podman(
    *args: str, check: bool = True, timeout: float = 600, capture: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS`` (its output captured); raise with the output when it fails."""
    done = subprocess.run(
        podman_argv(*args),
        env=podman_env(),
        text=True,
        capture_output=capture,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args[:3])} ... failed ({done.returncode}):\n"
            f"{(done.stdout or '')[-3000:]}\n{(done.stderr or '')[-3000:]}"
        )
    return done


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def base_key() -> str:
    text = f"{_BASE_RECIPE}|{SUITE}|minbase|{','.join(PACKAGES)}|{','.join(_TRIM)}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def base_image(log: bool = True) -> str:
    """The base image from Debian's packages (cached: the image, and its tree as a tarball)."""
    key = base_key()
    name = f"{BASE_REPO}:{SUITE}-{key}"
    if image_exists(name):
        return name
    tarball = CACHE / f"base-{SUITE}-{key}.tar"
    if not tarball.exists():
        began = time.monotonic()
        if log:
            print(f"[containers] debootstrap {SUITE} ({', '.join(PACKAGES)}): about 2 minutes")
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="dww-rootfs-", dir=CACHE) as tmp:
            root = Path(tmp) / "root"
            done = subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(PACKAGES)}",
                    SUITE,
                    str(root),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"debootstrap failed:\n{done.stdout[-3000:]}{done.stderr}")
            for part in _TRIM:
                target = root / part
                if target.exists():
                    shutil.rmtree(target)
                    target.mkdir(parents=True)
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
            partial.rename(tarball)  # whole, or not there
        if log:
            print(f"[containers] base tree built in {time.monotonic() - began:.0f}s: {tarball}")
    podman("import", "--change", "CMD=/bin/bash", str(tarball), name)
    return name


def build(
    tag: str,
    *,
    context: Path = PROJECT,
    containerfile: Path | None = None,
    build_args: Mapping[str, str] | None = None,
    no_cache: bool = False,
    timeout: float = 1200,
) -> float:
    """``podman build`` ``context`` into ``tag``; the seconds it took. Layers are cached."""
    argv = ["build", "--network", "host", "-t", tag]
    argv += ["-f", str(containerfile or context / "Containerfile")]
    args = dict(build_args or {})
    cert = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if cert and Path(cert).is_file():
        # This machine's CA bundle (an egress proxy's CA in it) for pip in the build stage:
        # mounted for the build's RUN steps only, never part of a layer.
        argv += ["--volume", f"{cert}:/run/host-ca.crt:ro"]
        args.setdefault("PIP_CERT", "/run/host-ca.crt")
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    if no_cache:
        argv.append("--no-cache")
    began = time.monotonic()
    podman(*argv, str(context), timeout=timeout)
    return time.monotonic() - began


def worker_image(no_cache: bool = False) -> tuple[str, float]:
    """The worker's image (the repository's Containerfile on the Debian base), tagged with the
    package's version and the base's key; (its name, build seconds)."""
    base = base_image()
    tag = f"{IMAGE_REPO}:{project_version()}"
    seconds = build(
        tag,
        build_args={
            "BASE": base,
            "VERSION": project_version(),
            "REVISION": _revision(),
            "CREATED": _revision("%cI"),
        },
        no_cache=no_cache,
    )
    return tag, seconds


def _revision(field: str = "%H") -> str:
    """The checkout's commit (or ``field`` of it: %cI, its time), for the image's labels."""
    done = subprocess.run(
        ["git", "-C", str(PROJECT), "log", "-1", f"--format={field}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def image_size(name: str) -> int:
    """The image's size in bytes, as podman reports it (uncompressed layers)."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


@contextlib.contextmanager
def container(
    image: str,
    *,
    name: str,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    options: Sequence[str] = (),
    read_only: bool = True,
) -> Iterator[str]:
    """A detached container on the host's network, with a read-only root and a /tmp of its
    own as the pod has (``read_only=False``: a writable root, to see with `changes` what it
    writes); removed on exit, whatever happened."""
    argv = ["run", "-d", "--name", name, "--network", "host"]
    if read_only:
        argv += ["--read-only", "--read-only-tmpfs=false"]
    argv += ["--tmpfs", "/tmp:rw,size=64m,mode=1777", *options]
    for key, value in (env or {}).items():
        argv += ["-e", f"{key}={value}"]
    podman(*argv, image, *args)
    try:
        yield name
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def changes(name: str) -> list[str]:
    """What the container changed in its root filesystem (``podman diff``: "C /path")."""
    return podman("diff", name).stdout.splitlines()


def logs(name: str) -> str:
    done = podman("logs", name, check=False)
    return (done.stdout or "") + (done.stderr or "")


def build_parser() -> argparse.ArgumentParser:
    """The command line this script takes (the docs' examples are checked against it)."""
    parser = argparse.ArgumentParser(prog="python -m scripts.containers", description=__doc__)
    parser.add_argument("what", choices=("base", "build"))
    parser.add_argument("--no-cache", action="store_true", help="build every layer again")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reason = available()
    if reason:
        print(f"[containers] {reason}", file=sys.stderr)
        return 1
    if args.what == "base":
        print(base_image())
        return 0
    tag, seconds = worker_image(no_cache=args.no_cache)
    print(f"{tag}: built in {seconds:.1f}s, {image_size(tag) / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
