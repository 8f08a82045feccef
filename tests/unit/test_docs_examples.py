"""The examples a user copies from the README and docs/ run, or at least parse, in the tests.

Every fenced block of README.md and docs/ (but the generated docs/reference/) is collected:

- Python blocks are **run**: a block whose first line is ``# <path>.py`` becomes that module
  in a temporary directory on ``sys.path``, every other block is executed and the ``test_*``
  functions it defines are called (the Flows example with the WorkerHarness example).
- every ``wfctl ...`` command line in a shell or YAML block (and in ``wfctl --help``'s
  examples) is **run** through wfctl's own code with the sidecar stubbed: the one message it
  publishes is built and validated by the worker's models (a renamed option, bad input or an
  invalid message fails);
- every ``dapr publish --topic T --data JSON`` is **validated** against the worker's model of
  topic T (``worker/topics.py``); a page's starts, approvals and control messages are then
  **run**, in order, through `WorkerHarness` with the sample workflows: none is rejected;
- JSON blocks that are messages, the requests of ``examples/workflow.http`` and the messages
  ``scripts/tutorial.sh`` publishes (run with a ``dapr`` that records instead of publishing)
  are validated the same way; a console ``curl`` names an operation of its OpenAPI document;
- project scripts (``scripts/*.sh``, ``python scripts/*.py``, ``python -m scripts.*``, in blocks
  and inline code) get their arguments checked by the script's own parser, without running it;
- ``kubectl -k`` overlays render, ``kubectl create secret`` names and keys are the manifests'
  ``secretKeyRef``s, ``podman build`` names a Containerfile, its ARGs and the package's version.

docs/contributing/docs.md ("Examples that run") says which level each kind of block gets.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from pydantic import BaseModel, TypeAdapter

from dapr_workflow_worker.testing import WorkerHarness
from worker.cli import app
from worker.cli.app import cli
from worker.cli.exitcodes import Exit
from worker.cli.sidecar import Address, Metadata
from worker.topics import TOPICS

ROOT = Path(__file__).resolve().parents[2]
PAGES = (ROOT / "docs").rglob("*.md")
SOURCES = [
    ROOT / "README.md",
    *sorted(p for p in PAGES if "reference" not in p.relative_to(ROOT).parts),
]
_FENCE = re.compile(r"^( *)```([\w-]*)[^\n]*\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
# Workflows the pages present as the reader's own, not hosted out of the box.
USERS_OWN = {"release_workflow", "invoice_workflow"}
SAMPLES = set(WorkerHarness(builtins=True).workflows)


@dataclass(frozen=True)
class Block:
    source: Path
    line: int
    lang: str
    text: str

    def __str__(self) -> str:
        return f"{self.source.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for source in SOURCES:
        text = source.read_text()
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            indent, lang, body = match.groups()
            body = "".join(row.removeprefix(indent) for row in body.splitlines(keepends=True))
            found.append(Block(source, line, lang, body))
    return found


BLOCKS = blocks()


# -- shell command lines ------------------------------------------------------------------


def scripts_of(block: Block) -> list[str]:
    """The shell text of a block: a shell block itself, each string of a YAML one (CI jobs)."""
    if block.lang in {"bash", "sh", "shell"}:
        return [block.text]
    if block.lang in {"yaml", "yml"}:
        strings: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, str):
                strings.append(node)
            elif isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(yaml.safe_load(block.text))
        return strings
    return []


_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "$(", ";;"}


def commands(script: str) -> Iterator[list[str]]:
    """Each simple command of a shell script, as its words (redirections dropped)."""
    script = script.replace("\\\n", " ")
    script = re.sub(r"(?<=[=\w])<([\w-]+)>", r"\1", script)  # a placeholder, <your-image>
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError:  # an unbalanced quote: not a line of ours
            continue
        current: list[str] = []
        skip_next = False
        for word in [*words, ";"]:
            if skip_next:
                skip_next = False
            elif word in _SEPARATORS:
                if current:
                    yield current
                current = []
            elif word in {">", ">>", "<", "2>", "2>&1"} or re.fullmatch(r"\d?>>?&?\d?", word):
                skip_next = not word.endswith("&1")
            else:
                current.append(word)


def program(words: list[str]) -> tuple[str, list[str]] | None:
    """(program, its arguments) without leading VAR=value words; `dapr run ... -- cmd` gives
    the command it runs."""
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words = words[1:]
    if not words:
        return None
    if words[:2] == ["dapr", "run"] and "--" in words:
        return program(words[words.index("--") + 1 :])
    return Path(words[0]).name, words[1:]


def invocations(name: str) -> list[tuple[Block, list[str]]]:
    found = []
    for block in BLOCKS:
        for script in scripts_of(block):
            for words in commands(script):
                called = program(words)
                if called and called[0] == name:
                    found.append((block, called[1]))
    return found


# -- wfctl: run through its own code, the sidecar stubbed ---------------------------------


def parse_wfctl(args: list[str]) -> click.Context:
    """What `wfctl ARGS` would parse to, without running anything (Click raises a
    UsageError for an unknown command or option, a bad choice or number)."""
    group = cli.make_context("wfctl", list(args), obj=None)
    rest = [*group._protected_args, *group.args]
    name, command, remaining = cli.resolve_command(group, rest)
    assert command is not None, f"no wfctl command in {args}"
    return command.make_context(name or "", remaining, parent=group)


def help_examples() -> list[tuple[str, list[str]]]:
    """The examples of `wfctl --help` and each `wfctl COMMAND --help` (also on the generated
    reference page): (where, wfctl's arguments)."""
    found = []
    for name, command in [("wfctl", cli), *sorted(cli.commands.items())]:
        text = f"{command.help or ''}\n{command.epilog or ''}"
        examples = text.split("Examples:", 1)[1] if "Examples:" in text else ""
        for words in commands(examples):
            called = program(words)
            if called and called[0] == "wfctl":
                found.append((f"wfctl {name} --help", called[1]))
    return found


WFCTL: list[tuple[object, list[str]]] = [*invocations("wfctl"), *help_examples()]

# What a page's `@file` stands for: plausible content the test writes before running.
AT_FILES: dict[str, Any] = {
    "order.json": {"order_id": "order-7", "amount": 5000},
    "tasks.json": {"tasks": ["a", "b"]},
    "payload.json": {"artifact": "app-1.2.tgz"},
}
# A shell or CI variable in a command line (`$VERSION`, `${{ github.run_id }}`, `$(...)`).
_VARIABLE = re.compile(r"\$\{\{[^}]*\}\}|\$\([^)]*\)|\$\{\w+\}|\$\w+")


@dataclass
class Ran:
    code: int
    out: str
    err: str
    published: list[tuple[str, dict[str, Any]]]


class _Interrupted:
    """A status-topic listener that is interrupted at once: a --wait ends with 130 after the
    message went out, a `watch` ends with 0."""

    def get(self, timeout: float) -> None:
        raise KeyboardInterrupt

    def close(self) -> None:
        pass


def run_wfctl(args: list[str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> Ran:
    """`wfctl ARGS` through wfctl's own code (`worker.cli.app.run`): its options, its input
    handling, the message it builds and validates with the worker's models, its publish; only
    the sidecar (`worker.cli.app.Connection`, wfctl's one seam to Dapr) is a stub that records
    what is published."""
    published: list[tuple[str, dict[str, Any]]] = []

    class RecordingSidecar:
        def __init__(self, address: Address, connect_timeout: float) -> None:
            pass

        def wait_healthy(self, waiting: Any = None) -> None:
            pass

        def metadata(self) -> Metadata:
            return Metadata("workflow-client", {"pubsub": "pubsub.redis"}, [])

        def check_pubsub(self, meta: Metadata, pubsub: str) -> str:
            return "pubsub.redis"

        def check_reaches_worker(self, *args: Any) -> None:
            pass

        def check_alone(self, meta: Metadata, *args: Any) -> Metadata:
            return meta

        def listen(self, pubsub: str, topic: str, kind: str) -> _Interrupted:
            return _Interrupted()

        def publish(
            self, pubsub: str, topic: str, body: dict[str, Any], *, message_id: str, source: str
        ) -> None:
            published.append((topic, body))

        def close(self) -> None:
            pass

    monkeypatch.setattr(app, "Connection", RecordingSidecar)
    monkeypatch.chdir(cwd)
    for name, content in AT_FILES.items():
        (cwd / name).write_text(json.dumps(content))
    args = [_VARIABLE.sub("42", word) for word in args]
    out, err = io.StringIO(), io.StringIO()
    code = app.run(args, out=out, err=err)
    return Ran(code, out.getvalue(), err.getvalue(), published)


def test_the_pages_show_wfctl() -> None:
    pages = {block.source.name for block, _ in WFCTL if isinstance(block, Block)}
    assert {"README.md", "wfctl.md"} <= pages
    assert len(WFCTL) >= 20


@pytest.mark.parametrize(("block", "args"), WFCTL, ids=[" ".join(a)[:60] for _, a in WFCTL])
def test_every_wfctl_command_runs_and_publishes_a_valid_message(
    block: object, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each command line runs as wfctl would run it, against a stub sidecar: it publishes
    exactly one message (`watch`: none), which fits its topic's model, and ends as it would
    with a real worker before the answer (0 published; 130, a --wait interrupted after the
    publish; `watch` 0)."""
    used = [w[1:] for w in args if w.startswith("@")]
    for name in used:
        assert name in AT_FILES, f"{block}: give the test a plausible {name} (AT_FILES)"
    ran = run_wfctl(args, monkeypatch, tmp_path)
    where = f"{block}: `wfctl {shlex.join(args)}`"
    assert ran.code in (Exit.OK, Exit.INTERRUPTED), f"{where}: exit {ran.code}: {ran.err}"
    if parse_wfctl(args).command.name == "watch":
        assert (ran.code, ran.published) == (0, []), f"{where}: {ran.err}"
        return
    assert len(ran.published) == 1, f"{where}: published {ran.published}"
    ((topic, body),) = ran.published
    (model_topic,) = [t for t in TOPIC_MODELS if topic.endswith(t)]
    validate(model_topic, body, where)
    if ran.code == Exit.OK:
        assert json.loads(ran.out)["topic"] == topic, where


def test_running_wfctl_tells_a_renamed_option_a_bad_input_and_an_invalid_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: str) -> str:
        ran = run_wfctl(list(args), monkeypatch, tmp_path)
        assert ran.code == Exit.USAGE and not ran.published, (args, ran)
        return ran.err

    assert "No such option" in refused("start", "counter_workflow", "--instance-id", "x")
    assert "No such command" in refused("begin", "counter_workflow")
    assert "not valid JSON" in refused("start", "counter_workflow", "--input", "{tasks: [a]}")
    assert "cannot read" in refused("start", "counter_workflow", "--input", "@missing.json")
    assert "would reject" in refused("start", "counter_workflow", "--start-at", "tomorrow")
    assert "give a JSON object" in refused("approve", "order-7", "--data", "[1]")
    ok = run_wfctl(["start", "counter_workflow", "--input", "@order.json"], monkeypatch, tmp_path)
    assert ok.code == Exit.OK and ok.published[0][1]["input"] == AT_FILES["order.json"]


# -- messages: validated against the worker's models, run through the harness -----------

TOPIC_MODELS = {topic.default: topic.model for topic in TOPICS if topic.inbound}


def validate(topic: str, data: Any, where: object) -> None:
    assert topic in TOPIC_MODELS, f"{where}: no such topic {topic}"
    model = TOPIC_MODELS[topic]
    if isinstance(model, TypeAdapter):
        model.validate_python(data)
    else:
        assert issubclass(model, BaseModel)
        model.model_validate(data)
    if topic == "workflow.start":
        assert data["workflow"] in SAMPLES | USERS_OWN, f"{where}: {data['workflow']} not hosted"


def published(args: list[str]) -> tuple[str, Any]:
    """(topic, data) of a `dapr publish` command's arguments."""
    topic = args[args.index("--topic") + 1]
    data = json.loads(args[args.index("--data") + 1])
    return topic, data


PUBLISHES = [
    (block, published(args)) for block, args in invocations("dapr") if args[:1] == ["publish"]
]


def test_the_pages_show_dapr_publish() -> None:
    pages = {block.source.name for block, _ in PUBLISHES}
    assert {"README.md", "tutorial.md"} <= pages


@pytest.mark.parametrize(("block", "message"), PUBLISHES, ids=[m[0] for _, m in PUBLISHES])
def test_every_published_message_fits_its_topic(block: Block, message: tuple[str, Any]) -> None:
    validate(*message, block)


@pytest.mark.parametrize("source", sorted({str(b.source.relative_to(ROOT)) for b, _ in PUBLISHES}))
def test_each_pages_messages_run_in_order_without_a_rejection(source: str) -> None:
    """The page's scenario, published in order, through the worker's own line with the
    sample workflows (in memory, no sidecar): nothing it sends is rejected."""
    harness = WorkerHarness(builtins=True)
    for block, (topic, data) in PUBLISHES:
        if str(block.source.relative_to(ROOT)) == source:
            events = harness.publish(topic.removeprefix("workflow."), data)
            rejected = [e for e in events if e["event"] == "rejected"]
            assert not rejected, f"{block}: {data} was rejected: {rejected}"
    assert harness.events


def test_a_renamed_field_fails_validation() -> None:
    with pytest.raises(ValueError, match="extra"):
        validate("workflow.start", {"workflow": "counter_workflow", "id": "x"}, "test")


def _json_messages() -> list[tuple[Block, dict[str, Any]]]:
    """JSON blocks that are messages (a start has "workflow" without "event")."""
    found = []
    for block in BLOCKS:
        if block.lang == "json":
            try:
                data = json.loads(block.text)
            except ValueError:
                continue  # an example cut short with "..."
            if isinstance(data, dict) and "workflow" in data and "event" not in data:
                found.append((block, data))
    return found


def test_json_messages_on_the_pages_fit() -> None:
    found = _json_messages()
    assert found
    for block, data in found:
        validate("workflow.start", data, block)


def test_the_http_examples_fit() -> None:
    """examples/workflow.http: each request's body fits its topic's model."""
    text = (ROOT / "examples" / "workflow.http").read_text()
    requests = re.findall(
        r"^POST \{\{publish\}\}/([\w.]+)\S*\n(?:[\w-]+: [^\n]*\n)*\n(.*?)(?=\n###|\Z)",
        text,
        re.MULTILINE | re.DOTALL,
    )
    assert len(requests) >= 8
    for topic, body in requests:
        validate(topic, json.loads(body), f"examples/workflow.http {topic}")


def test_the_tutorial_script_publishes_messages_that_fit(tmp_path: Path) -> None:
    """scripts/tutorial.sh with a `dapr` that records what it would publish: each message
    fits its topic, and the scenario runs through the harness without a rejection."""
    bin_dir = tmp_path / ".dapr" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "published.jsonl"
    fake = bin_dir / "dapr"
    fake.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"with open({str(log)!r}, 'a') as f: f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    fake.chmod(0o755)
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sleep").chmod(0o755)
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tutorial.sh")],
        env={**os.environ, "DAPR_RUNTIME_PATH": str(tmp_path), "RUN_ID": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    messages = [published(args) for args in calls if args[:1] == ["publish"]]
    assert len(messages) >= 10
    harness = WorkerHarness(builtins=True)
    for topic, data in messages:
        validate(topic, data, "scripts/tutorial.sh")
        events = harness.publish(topic.removeprefix("workflow."), data)
        assert not [e for e in events if e["event"] == "rejected"], (topic, data, events)


def test_a_console_curl_names_an_operation_of_its_api() -> None:
    document = json.loads((ROOT / "docs" / "reference" / "openapi.json").read_text())
    templates = [
        (method.upper(), re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"))
        for path, operations in document["paths"].items()
        for method in operations
    ]
    curls = [(b, a) for b, a in invocations("curl") if any(":8088/api/" in w for w in a)]
    assert curls
    for block, args in curls:
        method = args[args.index("-X") + 1] if "-X" in args else "GET"
        url = next(w for w in args if ":8088/api/" in w)
        path = re.sub(r"^https?://[^/]+", "", url).split("?")[0]
        assert any(m == method and t.match(path) for m, t in templates), f"{block}: {url}"


# -- Python: run ---------------------------------------------------------------------------

PYTHON = [block for block in BLOCKS if block.lang == "python"]
_MODULE = re.compile(r"\A# ([\w/]+)\.py\n")
# A fragment of the project's own code (a worked example for contributors) runs in the
# namespace of the module it belongs in, with the page's fragments before it.
_IN_MODULE = re.compile(r"<!-- example: in ([\w.]+) -->\s*\Z")


def module_of(block: Block) -> str | None:
    text = block.source.read_text()
    before = "\n".join(text.splitlines()[: block.line - 1])
    match = _IN_MODULE.search(before)
    return match.group(1) if match else None


def test_the_contributors_fragments_run_in_their_modules() -> None:
    """docs/contributing/add-action.md's worked example: the model, the gateway method and
    the row, each executed in the module it goes into (a renamed base class, type or field
    of Action fails here)."""
    fragments = [block for block in PYTHON if module_of(block)]
    assert len(fragments) >= 3
    defined: dict[str, Any] = {}
    for block in fragments:
        namespace = {**vars(importlib.import_module(module_of(block) or "")), **defined}
        exec(compile(block.text, str(block), "exec"), namespace)
        defined.update({k: v for k, v in namespace.items() if k in block.text})


def test_every_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Module blocks (first line `# path.py`) are written out and importable; the other
    blocks run, and the test functions they define pass."""
    assert len(PYTHON) >= 3
    modules: dict[Path, Block] = {}
    for block in PYTHON:
        match = _MODULE.match(block.text)
        if match:
            path = tmp_path / f"{match.group(1)}.py"
            if path in modules:
                assert path.read_text() == block.text, f"{block}: differs from {modules[path]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text)
            modules[path] = block
    assert modules
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    try:
        for path in modules:
            importlib.import_module(
                path.relative_to(tmp_path).with_suffix("").as_posix().replace("/", ".")
            )
        ran = 0
        for block in PYTHON:
            if _MODULE.match(block.text) or module_of(block):
                continue
            namespace: dict[str, Any] = {"__name__": "docs_example"}
            exec(compile(block.text, str(block), "exec"), namespace)
            for name, value in namespace.items():
                if name.startswith("test_") and callable(value):
                    value()
                    ran += 1
        assert ran >= 1
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]


# -- the project's scripts: their options, as each script takes them ----------------------

_INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
_SCRIPT = re.compile(
    r"(?:\S*python3?\s+(?:-m\s+scripts\.\w|scripts/\S+\.py)|scripts/\S+\.(?:sh|py)\s)"
)


def inline_commands() -> list[Block]:
    """Inline code spans (outside fenced blocks) that run a project script, as one-line
    shell blocks: `scripts/docs.sh 8000`, the benchmark pages' `python scripts/... --out ...`.
    A bare `scripts/x.py` names a file, not a command."""
    found = []
    for source in SOURCES:
        text = source.read_text()
        prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for match in _INLINE.finditer(prose):
            span = " ".join(match.group(1).split())
            if _SCRIPT.match(span + " ") and not re.fullmatch(r"scripts/\S+\.py", span):
                line = prose.count("\n", 0, match.start()) + 1
                found.append(Block(source, line, "inline", span))
    return found


def script_invocations() -> list[tuple[Block, str, list[str]]]:
    """(block, script path relative to the project, its arguments) for every invocation of a
    project script: `scripts/x.sh ...`, `[.venv/bin/]python scripts/x.py ...`,
    `python -m scripts.x ...`, in shell and YAML blocks and inline spans."""
    found = []
    shell = [b for b in BLOCKS if scripts_of(b)] + inline_commands()
    for block in shell:
        for script in scripts_of(block) if block.lang != "inline" else [block.text]:
            for words in commands(script):
                called = program(words)
                if called is None:
                    continue
                name, args = called
                if name in {"python", "python3"} and args[:1] == ["-m"] and len(args) > 1:
                    if args[1].startswith("scripts."):
                        path = args[1].replace(".", "/") + ".py"
                        found.append((block, path, args[2:]))
                    continue
                if name in {"python", "python3", "bash", "sh"} and args:
                    words, args = args, args[1:]
                    name = Path(words[0]).name
                else:
                    words = [w for w in words if not re.fullmatch(r"[A-Za-z_]\w*=.*", w)]
                if words[0].startswith(("scripts/", "./scripts/")):
                    found.append((block, words[0].removeprefix("./"), args))
    return found


SCRIPT_CALLS = script_invocations()


def _ids(calls: list[tuple[Block, str, list[str]]]) -> list[str]:
    return [f"{b.source.name}:{b.line} {p} {' '.join(a)}"[:70] for b, p, a in calls]


def test_the_pages_show_the_scripts() -> None:
    shown = {path for _, path, _ in SCRIPT_CALLS}
    assert {"scripts/run.sh", "scripts/test.sh", "scripts/docs.sh"} <= shown
    assert {"scripts/benchmark.py", "scripts/bench_watch.py", "scripts/bench_calls.py"} <= shown
    assert any(b.lang == "inline" for b, _, _ in SCRIPT_CALLS)


# Shell scripts that check their arguments alone with SCRIPT_CHECK_ARGS=1 (exit 2 on a bad one,
# starting nothing); scripts/test.sh hands its arguments to pytest.
CHECKS_ITS_ARGS = {"scripts/run.sh", "scripts/docs.sh", "scripts/tutorial.sh"}


def check_script_args(path: str, args: list[str], tmp_path: Path) -> str | None:
    """Why `path args` would be refused, or None."""
    assert (ROOT / path).is_file(), f"no {path}"
    if path.endswith(".py"):
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert hasattr(module, "build_parser"), f"{path}: no build_parser() to check against"
        parser = module.build_parser()
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                parser.parse_args(args)
        except SystemExit as exit_:
            return f"exit {exit_.code}: {stderr.getvalue().strip()}"
        return None
    if path in CHECKS_ITS_ARGS:
        done = subprocess.run(
            ["bash", str(ROOT / path), *args],
            env={**os.environ, "SCRIPT_CHECK_ARGS": "1"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()}"
    if path == "scripts/test.sh":  # its arguments are pytest's: parsed by pytest, nothing run
        return _pytest_refuses(tuple(args)) if args else None
    return None if not args else f"{path} is shown with arguments; make them checkable here"


@functools.cache
def _pytest_refuses(args: tuple[str, ...]) -> str | None:
    """pytest's own parser on ARGS (collecting from an empty directory, so nothing runs)."""
    with tempfile.TemporaryDirectory() as empty:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "pytest", *args, "--collect-only", "-q"),
                *("-p", "no:cacheprovider", "--ignore=tests", "--ignore=examples", empty),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    usage = done.returncode == pytest.ExitCode.USAGE_ERROR
    return f"pytest: {done.stderr.strip() or done.stdout.strip()}" if usage else None


@pytest.mark.parametrize(("block", "path", "args"), SCRIPT_CALLS, ids=_ids(SCRIPT_CALLS))
def test_every_script_invocation_uses_options_the_script_takes(
    block: Block, path: str, args: list[str], tmp_path: Path
) -> None:
    args = [_VARIABLE.sub("42", word) for word in args]
    refused = check_script_args(path, args, tmp_path)
    assert refused is None, f"{block}: `{path} {shlex.join(args)}`: {refused}"


@pytest.mark.parametrize(
    ("path", "args"),
    [
        ("scripts/run.sh", ["--reddis"]),
        ("scripts/run.sh", ["--redis", "--profile", "redis"]),
        ("scripts/run.sh", ["--profile", "mongo"]),
        ("scripts/docs.sh", ["--port", "8000"]),
        ("scripts/tutorial.sh", ["approval"]),
        ("scripts/test.sh", ["--no-such-pytest-option"]),
        ("scripts/test.sh", ["tests/no_such_dir"]),
        ("scripts/benchmark.py", ["--paced", "1000"]),
        ("scripts/bench_watch.py", ["--smoke", "--n", "x"]),
        ("scripts/containers.py", ["push"]),
        ("scripts/docs_reference.py", ["--chek"]),
    ],
)
def test_a_wrong_option_is_refused(path: str, args: list[str], tmp_path: Path) -> None:
    assert check_script_args(path, args, tmp_path) is not None


# -- Kubernetes and containers: what the commands name exists --------------------------------

KUBECTL = invocations("kubectl")


def _option(args: list[str], *names: str) -> str | None:
    for i, word in enumerate(args):
        for name in names:
            if word == name and i + 1 < len(args):
                return args[i + 1]
            if name.startswith("--") and word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


def _render(overlay: Path) -> tuple[dict[str, Any], ...]:
    from tests.deploy import schemas

    try:
        return schemas.render(overlay)
    except schemas.Missing as missing:
        pytest.skip(f"kustomize is not installed, nothing rendered: {missing}")


def secret_refs(node: Any) -> set[tuple[str, str]]:
    """(name, key) of every secretKeyRef (the pod's env, the Dapr components)."""
    found: set[tuple[str, str]] = set()
    if isinstance(node, dict):
        ref = node.get("secretKeyRef")
        if isinstance(ref, dict):
            found.add((ref["name"], ref["key"]))
        for value in node.values():
            found |= secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= secret_refs(value)
    return found


def test_the_pages_kustomizations_exist_and_render() -> None:
    applied = [(b, a) for b, a in KUBECTL if _option(a, "-k", "--kustomize")]
    assert applied
    for block, args in applied:
        path = ROOT / (_option(args, "-k", "--kustomize") or "")
        assert (path / "kustomization.yaml").is_file(), f"{block}: no kustomization at {path}"
        assert _render(path), f"{block}: {path} renders nothing"


def test_the_secrets_the_pages_create_are_those_the_manifests_reference() -> None:
    """Per page: the `kubectl create secret generic` names and keys are exactly the
    secretKeyRefs of what the page applies, in the same namespace."""
    pages = {b.source for b, a in KUBECTL if "secret" in a}
    assert pages
    for page in pages:
        created: set[tuple[str, str]] = set()
        referenced: set[tuple[str, str]] = set()
        namespaces = set()
        for block, args in KUBECTL:
            if block.source != page:
                continue
            namespace = _option(args, "-n", "--namespace") or "default"
            if " ".join(args).find("create secret generic ") >= 0:
                namespaces.add(namespace)
                name = args[args.index("generic") + 1]
                for i, word in enumerate(args):
                    if word.startswith(("--from-literal=", "--from-file=")):
                        created.add((name, word.split("=", 2)[1]))
                    elif word in ("--from-literal", "--from-file"):
                        created.add((name, args[i + 1].split("=", 1)[0]))
            overlay = _option(args, "-k", "--kustomize")
            if overlay:
                namespaces.add(namespace)
                referenced |= secret_refs(list(_render(ROOT / overlay)))
        assert created == referenced, f"{page.name}: created {created}, referenced {referenced}"
        assert len(namespaces) == 1, f"{page.name}: secrets and workloads in {namespaces}"


PODMAN_BUILDS = [(b, a[1:]) for b, a in invocations("podman") if a[:1] == ["build"]]


def test_the_podman_builds_name_a_containerfile_and_its_args() -> None:
    """The context and Containerfile exist, each --build-arg is an ARG of it, the tag is the
    package's version."""
    assert PODMAN_BUILDS
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for block, args in PODMAN_BUILDS:
        flags_with_value = {"-t", "--tag", "-f", "--file", "--build-arg"}
        positional = [
            w
            for i, w in enumerate(args)
            if not w.startswith("-") and (i == 0 or args[i - 1] not in flags_with_value)
        ]
        assert len(positional) == 1, f"{block}: context? {positional}"
        context = ROOT / positional[0]
        assert context.is_dir(), f"{block}: no context {context}"
        file = _option(args, "-f", "--file")
        containerfile = ROOT / file if file else context / "Containerfile"
        assert containerfile.is_file(), f"{block}: no {containerfile}"
        declared = set(re.findall(r"^ARG\s+(\w+)", containerfile.read_text(), re.MULTILINE))
        for i, word in enumerate(args):
            if word == "--build-arg":
                name = args[i + 1].split("=", 1)[0]
                assert name in declared, f"{block}: --build-arg {name}: no ARG {name}"
        tag = _option(args, "-t", "--tag")
        assert tag == f"dapr-workflow-worker:{version}", f"{block}: tag {tag}"
