"""The committed JSON Schemas and AsyncAPI document are what the models generate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from worker.schemas import documents, render

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


@pytest.mark.parametrize("name", sorted(documents()))
def test_committed_schema_is_up_to_date(name: str) -> None:
    committed = (DOCS / name).read_text()
    assert committed == render(documents()[name]), (
        f"docs/schemas/{name} is stale: run `python -m worker.schemas docs/schemas`"
    )


def test_asyncapi_references_resolve() -> None:
    document = documents()["asyncapi.json"]
    text = json.dumps(document)
    for ref in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node = document
        for part in ref.split("/"):
            assert part in node, f"dangling $ref #/{ref}"
            node = node[part]


def test_every_topic_has_a_channel_and_an_operation() -> None:
    document = documents()["asyncapi.json"]
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == {
        "workflow.start",
        "workflow.approval",
        "workflow.control",
        "workflow.status",
    }
    actions = {o["action"] for o in document["operations"].values()}
    assert actions == {"send", "receive"}
