"""MkDocs hook (mkdocs.yml `hooks:`): links from a page to repository files outside docs/.

The pages link to the project's files the way a Git host renders Markdown, relative to the page
(``../../examples/workflow.http`` from ``docs/getting-started/``), so they work there as they
are. The site holds only docs/, so at build time each such link is checked (the file must exist
in the repository: a renamed file fails ``mkdocs build --strict`` like a broken page link) and
rewritten: to the file on the repository's host when ``repo_url`` is set in mkdocs.yml, else to
the path in code (``examples/workflow.http``), which a reader finds in their clone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^( {0,8})(```|~~~).*?^\1\2[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")


def repository_path(target: str, page_dir: Path, docs_dir: Path) -> str | None:
    """The repository path ``target`` points at, when it is a file outside docs/; else None.

    Raises ValueError for a link that leaves the repository or names no file."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return None
    path = target.partition("#")[0]
    resolved = (page_dir / path).resolve()
    if resolved == docs_dir or docs_dir in resolved.parents:
        return None
    if resolved != REPO and REPO not in resolved.parents:
        raise ValueError(f"link {target!r} leaves the repository")
    if not resolved.exists():
        raise ValueError(f"link {target!r}: no such file in the repository")
    return resolved.relative_to(REPO).as_posix() + ("/" if resolved.is_dir() else "")


def rewrite(markdown: str, page_dir: Path, docs_dir: Path, repo_url: str | None) -> str:
    """``markdown`` with every link to a repository file outside docs/ checked and rewritten."""

    def link(match: re.Match[str]) -> str:
        rel = repository_path(match["target"], page_dir, docs_dir)
        if rel is None:
            return match[0]
        text = match["text"]
        if repo_url:
            kind = "tree" if rel.endswith("/") else "blob"
            return f"{match['bang']}[{text}]({repo_url.rstrip('/')}/{kind}/main/{rel})"
        if text.strip("`").rstrip("/") == rel.rstrip("/"):
            return f"`{rel}`"
        return f"{text} (`{rel}`)"

    def prose(part: str) -> str:
        return LINK.sub(link, part)

    out, last = [], 0
    for fence in FENCE.finditer(markdown):
        out.append(prose(markdown[last : fence.start()]))
        out.append(fence[0])
        last = fence.end()
    out.append(prose(markdown[last:]))
    return "".join(out)


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    page_dir = (docs_dir / page.file.src_path).parent
    try:
        return rewrite(markdown, page_dir, docs_dir, config["repo_url"])
    except ValueError as e:
        raise PluginError(f"{page.file.src_path}: {e}") from e
