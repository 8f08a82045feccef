"""Machine-readable contract, generated from the models so it cannot drift.

``python -m worker.schemas docs/schemas`` writes one JSON Schema per message and for the status
event, plus ``asyncapi.json`` (AsyncAPI 3.0) describing the topics. A unit test fails when the
committed files differ from what the models generate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from worker import __version__
from worker.config import Settings
from worker.events import EVENT_TYPE_PREFIX, EventType
from worker.topics import TOPICS


def json_schema(
    model: type[BaseModel] | TypeAdapter[Any], ref_template: str = "#/$defs/{model}"
) -> dict[str, Any]:
    if isinstance(model, TypeAdapter):
        schema = model.json_schema(ref_template=ref_template)
        schema.setdefault("title", "ControlAction")
    else:
        schema = model.model_json_schema(ref_template=ref_template)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def asyncapi_schema(node: Any) -> Any:
    """``node`` with each OpenAPI-style discriminator turned into AsyncAPI 3's.

    Pydantic writes a discriminated union as ``oneOf`` plus OpenAPI's object
    ``"discriminator": {"propertyName": "action", "mapping": {"suspend": "#/.../Suspend", ...}}``.
    An AsyncAPI 3 Schema Object wants the property name as a string, that property defined in
    the same schema and required there: so ``"discriminator": "action"``, ``properties.action``
    an enum of the mapping's values (each variant still pins its own with ``const``) and
    ``"action"`` in ``required``. The JSON Schema files keep pydantic's form, which draft 2020-12
    treats as an annotation and OpenAPI-aware tools read.
    """
    if isinstance(node, list):
        return [asyncapi_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: asyncapi_schema(value) for key, value in node.items()}
    openapi = schema.get("discriminator")
    if isinstance(openapi, dict) and "propertyName" in openapi:
        name = openapi["propertyName"]
        schema["discriminator"] = name
        schema["properties"] = {
            **schema.get("properties", {}),
            name: {"type": "string", "enum": list(openapi["mapping"])},
        }
        schema["required"] = [*(r for r in schema.get("required", []) if r != name), name]
    return schema


def asyncapi() -> dict[str, Any]:
    defaults = Settings.model_construct()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for declared in TOPICS:
        setting, model, summary = declared.setting, declared.model, declared.summary
        name = declared.default.replace(".", "_")
        topic = declared.address(defaults)
        schema = asyncapi_schema(json_schema(model, ref_template="#/components/schemas/{model}"))
        schema.pop("$schema")
        schemas.update(schema.pop("$defs", {}))
        messages[name] = {
            "name": schema.get("title", name),
            "summary": summary,
            "contentType": "application/json",
            "payload": schema,
        }
        if not declared.inbound:
            messages[name]["description"] = (
                f"CloudEvent type: {EVENT_TYPE_PREFIX}<event> with <event> one of "
                f"{', '.join(e.value for e in EventType)}; subject: the instance id; id: stable "
                "for one transition (drop duplicates by id)."
            )
        channels[name] = {
            "address": topic,
            "description": f"Topic {topic!r} (setting {setting}).",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        action = "receive" if declared.inbound else "send"
        operations[f"{action}_{name}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": summary,
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "dapr-workflow-worker",
            "version": __version__,
            "description": "Control Dapr Workflows by publishing CloudEvents; status changes are "
            "published back. Messages are CloudEvents 1.0 whose data is the JSON below.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def documents() -> dict[str, dict[str, Any]]:
    """File name -> content, for everything under docs/schemas."""
    files = {f"{t.default}.schema.json": json_schema(t.model) for t in TOPICS}
    files["asyncapi.json"] = asyncapi()
    return files


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else "docs/schemas")
    target.mkdir(parents=True, exist_ok=True)
    for name, document in documents().items():
        (target / name).write_text(render(document))
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
