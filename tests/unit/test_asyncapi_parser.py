"""The AsyncAPI document passes the reference parser, @asyncapi/parser, pinned in tests/asyncapi.

Each test runs ``node tests/asyncapi/validate.mjs FILE``, which prints the parser's diagnostics
and exits 1 when any is an error. scripts/setup.sh installs node and the parser (npm ci); a
machine without them fails here rather than skipping, since CI runs the set-up first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from worker.schemas import asyncapi, render

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR_DIR = ROOT / "tests" / "asyncapi"
INSTALLED = VALIDATOR_DIR / "node_modules" / "@asyncapi" / "parser" / "package.json"
RUN_SETUP = "run scripts/setup.sh (installs node, npm and the pinned parser in tests/asyncapi)"


def validate(document: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed: {RUN_SETUP}", pytrace=False)
    pinned = json.loads((VALIDATOR_DIR / "package.json").read_text())["dependencies"]
    if not INSTALLED.exists():
        pytest.fail(f"@asyncapi/parser is not installed: {RUN_SETUP}", pytrace=False)
    installed = json.loads(INSTALLED.read_text())["version"]
    if installed != pinned["@asyncapi/parser"]:
        pytest.fail(
            f"@asyncapi/parser {installed} is installed, {pinned['@asyncapi/parser']} pinned: "
            f"{RUN_SETUP}",
            pytrace=False,
        )
    return subprocess.run(
        [node, str(VALIDATOR_DIR / "validate.mjs"), str(document)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_no_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"the AsyncAPI parser reports errors (exit {result.returncode}):\n"
        f"{result.stdout}{result.stderr}"
    )
    assert " 0 error(s)" in result.stdout, result.stdout


def test_committed_document_passes_the_reference_parser() -> None:
    assert_no_error(validate(ROOT / "docs" / "schemas" / "asyncapi.json"))


def test_generated_document_passes_the_reference_parser(tmp_path: Path) -> None:
    document = tmp_path / "asyncapi.json"
    document.write_text(render(asyncapi()))
    assert_no_error(validate(document))


def test_the_parser_rejects_an_openapi_style_discriminator(tmp_path: Path) -> None:
    """The check can fail: pydantic's own discriminator object, put back, is an error."""
    generated = asyncapi()
    payload: dict[str, Any] = generated["components"]["messages"]["workflow_control"]["payload"]
    assert payload["discriminator"] == "action"
    payload["discriminator"] = {
        "propertyName": "action",
        "mapping": {"suspend": "#/components/schemas/Suspend"},
    }
    document = tmp_path / "asyncapi.json"
    document.write_text(render(generated))
    result = validate(document)
    assert result.returncode == 1, result.stdout + result.stderr
    assert '"discriminator" property type must be string' in result.stdout, result.stdout
