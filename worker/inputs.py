"""Typed inputs: the model a workflow's or activity's input parameter is annotated with.

The Dapr SDK (1.18.3) turns a decoded input into the pydantic model (anything with
``model_validate`` and ``model_dump``) that the function's second parameter is annotated
with, ``Optional[Model]`` unwrapped, and passes ``None`` and instances unchanged. The worker
does the same behind its reporting wrapper, and also for a dataclass (validated with pydantic;
the SDK passes a dataclass-annotated input as it was decoded: a dict or a SimpleNamespace).
A start message's input is checked against the same model before anything runs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace, UnionType
from typing import Any

from pydantic import TypeAdapter, ValidationError


def _is_model_class(cls: Any) -> bool:
    """The SDK's test: a class with ``model_dump`` and ``model_validate`` (pydantic v2)."""
    return (
        inspect.isclass(cls)
        and callable(getattr(cls, "model_dump", None))
        and callable(getattr(cls, "model_validate", None))
    )


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(X, True) for ``Optional[X]`` and ``X | None``; (annotation, False) otherwise."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(annotation)):
            return args[0], True
    return annotation, False


@dataclass(frozen=True)
class InputModel:
    """A function's declared input type. ``optional``: ``None`` fits (annotated
    ``X | None``, or the parameter has a default)."""

    type: type
    optional: bool = False

    @property
    def name(self) -> str:
        return self.type.__name__

    def coerce(self, value: Any) -> Any:
        """``value`` as an instance of the model, as the SDK does: ``None`` and instances pass
        unchanged. Raises ``ValidationError`` when it does not fit."""
        if value is None or isinstance(value, self.type):
            return value
        if isinstance(value, SimpleNamespace):  # the SDK's decoding of a dataclass it encoded
            value = vars(value)
        if _is_model_class(self.type):
            return typing.cast(Any, self.type).model_validate(value)
        return _adapter(self.type).validate_python(value)

    def check(self, value: Any) -> str | None:
        """Why ``value`` (a message's input) does not fit, or None when it does."""
        if value is None:
            return None if self.optional else f"an input is required ({self.name})"
        try:
            self.coerce(value)
        except ValidationError as error:
            return describe(error)
        return None


@functools.lru_cache(maxsize=256)
def _adapter(cls: type) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


def describe(error: ValidationError) -> str:
    """A validation error on one line: ``field: message; ...``."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "input"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def input_model(fn: Callable[..., Any]) -> InputModel | None:
    """The model ``fn``'s input (its second parameter) is annotated with: a pydantic model or
    a dataclass, else None."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if len(params) < 2 or params[1].annotation is inspect.Parameter.empty:
        return None
    annotation = params[1].annotation
    if isinstance(annotation, str):
        try:
            annotation = typing.get_type_hints(fn).get(params[1].name, annotation)
        except Exception:
            return None
    annotation, optional = _unwrap_optional(annotation)
    if not (_is_model_class(annotation) or dataclasses.is_dataclass(annotation)):
        return None
    has_default = params[1].default is not inspect.Parameter.empty
    return InputModel(annotation, optional=optional or has_default)
