"""Reading the `openai` package's realtime unions: which pydantic class serves which event `type`.

The tables are derived from the SDK's own unions, so a new SDK release moves them with it.
"""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel


def union_members(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic classes of a (possibly Annotated / Optional) union annotation."""
    if get_origin(annotation) is not None and hasattr(annotation, "__metadata__"):
        annotation = get_args(annotation)[0]  # Annotated[Union[...], PropertyInfo(...)]
    if get_origin(annotation) in (Union, types.UnionType):
        members: list[type[BaseModel]] = []
        for arg in get_args(annotation):
            members.extend(union_members(arg))
        return members
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def literal_values(model: type[BaseModel], field: str) -> tuple[Any, ...]:
    """The values a Literal field accepts ((), if the field is absent or not a Literal)."""
    info = model.model_fields.get(field)
    if info is None:
        return ()
    annotation = info.annotation
    for arg in (annotation, *get_args(annotation)):
        if get_origin(arg) is Literal:
            return get_args(arg)
    return ()


def classes_by_type(union: Any) -> dict[str, type[BaseModel]]:
    """`{"session.update": SessionUpdateEvent, ...}` for an event union."""
    table: dict[str, type[BaseModel]] = {}
    for member in union_members(union):
        for value in literal_values(member, "type"):
            table[value] = member
    return table
