"""The documentation site: it builds strictly, and its generated reference matches the code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from scripts import docs_reference
from scripts.docs_hooks import rewrite
from worker.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
GENERATED = docs_reference.documents()


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_committed_reference_is_up_to_date(name: str) -> None:
    committed = (REFERENCE / name).read_text()
    assert committed == GENERATED[name], (
        f"docs/reference/{name} is stale: run `python -m scripts.docs_reference`"
    )


def test_every_setting_is_in_the_configuration_reference() -> None:
    page = (REFERENCE / "configuration.md").read_text()
    for name, field in Settings.model_fields.items():
        for variable in docs_reference.variables(name, field):
            assert f"`{variable}`" in page, f"{variable} ({name}) missing"
        assert f"`--{name.replace('_', '-')}`" in page
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert len(rows) == len(Settings.model_fields)


def test_every_wfctl_command_and_option_is_in_the_cli_reference() -> None:
    page = (REFERENCE / "wfctl.md").read_text()
    commands = docs_reference.wfctl_commands()
    assert {"start", "approve", "watch", "purge", "suspend"} <= {name for name, _ in commands}
    for name, command in commands:
        assert f"\n## wfctl {name}\n" in page
        assert f"Usage: wfctl {name} " in page
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                for flag in param.opts:
                    assert flag in page, f"wfctl {name} {flag} missing"


def test_every_console_operation_is_in_the_api_reference() -> None:
    document = json.loads((REFERENCE / "openapi.json").read_text())
    page = (REFERENCE / "console-api.md").read_text()
    assert document["paths"]
    for path, operations in document["paths"].items():
        for method in operations:
            assert f"| {method.upper()} | `{path}` |" in page


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "index.html").is_file()
    assert (site / "reference" / "configuration" / "index.html").is_file()
    # the site loads nothing from elsewhere: no web fonts, no scripts or styles from a CDN
    for page in site.rglob("*.html"):
        html = page.read_text()
        assert not re.search(r"<(?:script|link)[^>]+(?:src|href)=\"(?:https?:)?//", html), page
        assert "fonts.googleapis" not in html, page
    # the schemas were included whole, not just linked
    schemas = (site / "reference" / "schemas" / "index.html").read_text()
    assert "additionalProperties" in schemas


def test_links_to_repository_files_are_checked_and_rewritten() -> None:
    page_dir = DOCS / "getting-started"
    text = "[`examples/workflow.http`](../../examples/workflow.http) and [the tests](../../tests/)"
    assert (
        rewrite(text, page_dir, DOCS, None) == "`examples/workflow.http` and the tests (`tests/`)"
    )
    assert rewrite(text, page_dir, DOCS, "https://example.org/org/repo") == (
        "[`examples/workflow.http`](https://example.org/org/repo/blob/main/examples/workflow.http)"
        " and [the tests](https://example.org/org/repo/tree/main/tests/)"
    )
    untouched = "[a page](../concepts/messages.md#order) [out](https://x.org/a) [here](#top)"
    assert rewrite(untouched, page_dir, DOCS, None) == untouched
    fenced = "```text\n[not a link](../../no/such/file)\n```\n"
    assert rewrite(fenced, page_dir, DOCS, None) == fenced
    with pytest.raises(ValueError, match="no such file"):
        rewrite("[gone](../../examples/no-such-file)", page_dir, DOCS, None)
    with pytest.raises(ValueError, match="leaves the repository"):
        rewrite("[far](../../../etc/passwd)", page_dir, DOCS, None)


def test_every_page_is_in_the_nav() -> None:
    """mkdocs reports pages left out of the nav (validation.omitted_files: warn, so --strict
    fails); this says which, without a build."""
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert pages
    missing = [p for p in pages if p not in nav]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


# -- pointers from the code to the docs ---------------------------------------------------

# Where the code tells users (log lines, errors, comments in shipped files) to read on.
POINTING = ["worker", "dapr_workflow_worker", "scripts", "components", "deploy", "docs/grafana"]
_POINTER = re.compile(r"\bdocs/[\w./-]+?\.md(?:#[\w-]+)?")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.MULTILINE)
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchors(page: Path) -> set[str]:
    """The ids mkdocs gives the page's headings (the toc extension's default slugify)."""
    from markdown.extensions.toc import slugify  # type: ignore[import-untyped]

    text = _FENCE.sub("", page.read_text())
    return {slugify(title.replace("`", ""), "-") for title in _HEADING.findall(text)}


def pointers() -> list[tuple[str, str]]:
    found = []
    for top in POINTING:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in {".py", ".yaml", ".yml", ".json", ".env", ".sh"}:
                text = path.read_text(errors="replace")
                found += [(path.relative_to(ROOT).as_posix(), p) for p in _POINTER.findall(text)]
    return found


def test_the_codes_pointers_name_existing_pages_and_anchors() -> None:
    found = pointers()
    assert len(found) >= 10
    for source, pointer in found:
        page, _, anchor = pointer.partition("#")
        assert (ROOT / page).is_file(), f"{source} points at {pointer}: no such page"
        if anchor:
            assert anchor in anchors(ROOT / page), f"{source} points at {pointer}: no such anchor"


def test_no_code_points_at_the_readme() -> None:
    """The README is short now: what it held is on the site's pages, and pointers go there."""
    for top in POINTING:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in {".py", ".yaml", ".yml", ".json", ".env", ".sh"}:
                assert "README" not in path.read_text(errors="replace"), path


def test_the_readmes_links_name_existing_files_and_anchors() -> None:
    """The README is read on a Git host: its relative links are paths in the repository, and
    most go into docs/ (mkdocs does not check them: the README is not a page)."""
    text = _FENCE.sub("", (ROOT / "README.md").read_text())
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert sum(link.startswith("docs/") for link in local) >= 20
    for link in local:
        path, _, anchor = link.partition("#")
        assert (ROOT / path).exists(), f"README links to {link}: no such file"
        if anchor:
            assert anchor in anchors(ROOT / path), f"README links to {link}: no such anchor"
