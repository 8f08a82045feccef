"""The examples a user copies from the README and docs/ run, or at least parse, in the tests.

Every fenced block of README.md and docs/ (but the generated docs/reference/) is collected:

- Python blocks are **run**: a block whose first line is ``# <path>.py`` becomes that module
  in a temporary directory on ``sys.path``, every other block is executed and the ``test_*``
  functions it defines are called (the Flows example with the WorkerHarness example).
- every ``wfctl ...`` command line in a shell or YAML block is **parsed** by wfctl's own Click
  commands (a renamed command or option, a bad choice or number fails);
- every ``dapr publish --topic T --data JSON`` is **validated** against the worker's model of
  topic T (``worker/topics.py``); a page's starts, approvals and control messages are then
  **run**, in order, through `WorkerHarness` with the sample workflows: none is rejected;
- JSON blocks that are messages, the requests of ``examples/workflow.http`` and the messages
  ``scripts/tutorial.sh`` publishes (run with a ``dapr`` that records instead of publishing)
  are validated the same way; a console ``curl`` names an operation of its OpenAPI document.

docs/contributing/docs.md ("Examples that run") says which level each kind of block gets.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from pydantic import BaseModel, TypeAdapter

from dapr_workflow_worker.testing import WorkerHarness
from worker.cli.app import cli
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


# -- wfctl: parsed by its own commands ---------------------------------------------------


def parse_wfctl(args: list[str]) -> click.Context:
    """What `wfctl ARGS` would parse to, without running anything (Click raises a
    UsageError for an unknown command or option, a bad choice or number)."""
    group = cli.make_context("wfctl", list(args), obj=None)
    rest = [*group._protected_args, *group.args]
    name, command, remaining = cli.resolve_command(group, rest)
    assert command is not None, f"no wfctl command in {args}"
    return command.make_context(name or "", remaining, parent=group)


WFCTL = invocations("wfctl")


def test_the_pages_show_wfctl() -> None:
    pages = {block.source.name for block, _ in WFCTL}
    assert {"README.md", "wfctl.md"} <= pages
    assert len(WFCTL) >= 8


@pytest.mark.parametrize(("block", "args"), WFCTL, ids=[" ".join(a)[:60] for _, a in WFCTL])
def test_every_wfctl_command_parses(block: Block, args: list[str]) -> None:
    try:
        context = parse_wfctl(args)
    except click.UsageError as error:
        pytest.fail(f"{block}: `wfctl {shlex.join(args)}`: {error.format_message()}")
    if context.command.name == "start":
        workflow = context.params["workflow"]
        assert workflow in SAMPLES | USERS_OWN, f"{block}: {workflow} is not hosted"


def test_parsing_tells_a_renamed_option() -> None:
    with pytest.raises(click.UsageError, match="No such option"):
        parse_wfctl(["start", "counter_workflow", "--instance-id", "x"])
    with pytest.raises(click.UsageError, match="No such command"):
        parse_wfctl(["begin", "counter_workflow"])


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
