"""Pydantic's errors in words ops staff can act on: ``describe_error`` turns one error into a
sentence ("must be one of verified, rejected, pending (got 'verifyed')"; "unknown field; did
you mean 'behaviours'?"), finding the fields a misspelt one could have meant from the model.
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from ingest_server.rules.reasons import ReasonCode
from simulators.scenario_behaviours import BEHAVIOUR_MODELS

Loc = tuple[str | int, ...]
_NUMBER = re.compile(r"[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?")


def describe_error(error: ErrorDetails, root: type[BaseModel] | None = None) -> str:
    """One pydantic error as a sentence; ``root`` (the model validated) lets an unknown field
    suggest the field meant."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    got = (
        f" (got {value!r})" if isinstance(value, str | int | float | bool) or value is None else ""
    )
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        known = _fields_at(root, tuple(error["loc"])[:-1]) if root else []
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listing = f" (fields here: {', '.join(known)})" if known and not close else ""
        return f"unknown field{hint}{listing}"
    if kind == "union_tag_invalid":
        tag = str(ctx.get("tag", value))
        close = difflib.get_close_matches(tag, list(BEHAVIOUR_MODELS), n=1)
        hint = (
            f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(BEHAVIOUR_MODELS)})"
        )
        return f"unknown behaviour {tag!r}{hint}"
    if kind in ("literal_error", "enum"):
        options = [
            o.strip().strip("'")
            for o in str(ctx.get("expected", "")).replace(" or ", ", ").split(",")
        ]
        if len(options) <= 6:
            return f"must be one of {', '.join(options)}{got}"
        close = difflib.get_close_matches(str(value), options, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        what = "reason code" if set(options) == {c.value for c in ReasonCode} else "value"
        return f"not a known {what}{got}{hint}"
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type", "int_from_float"):
        whole = "a whole number" if kind.startswith("int") else "a number"
        if isinstance(value, str) and re.fullmatch(r"[-+]?0[0-9_]+", value):
            # Left as text by simulators.scenario_yaml: YAML 1.1 reads 045 as octal 37.
            return f"must be a number{got}; write it without the leading 0"
        if isinstance(value, str) and _NUMBER.fullmatch(value):
            return f"must be a number, not text{got}; write it without quotes"
        return f"must be {whole}{got}"
    message = error["msg"].removeprefix("Value error, ")
    if message.startswith("id must match"):  # common.topics.validate_id: ids go into topics
        return f"must be 1 to 64 ASCII letters (a-z, A-Z), digits, - or _{got}"
    if message.startswith("Input should be"):
        message = "must be" + message.removeprefix("Input should be")
        if got and "(got" not in message:
            message += got
    return message


def _fields_at(root: type[BaseModel], loc: Loc) -> list[str]:
    current: Any = root
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    current = _model_in(current)
    if current is not None:
        behaviour = current in BEHAVIOUR_MODELS.values()
        return [
            info.alias or name
            for name, info in current.model_fields.items()
            if not (behaviour and name == "name")  # the discriminator is the mapping's key
        ]
    return []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation holds: itself, or the one model of a union (``link``)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        models = [m for m in map(_model_in, get_args(annotation)) if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def _step(annotation: Any, part: str | int) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation)
    if origin is list and isinstance(part, int):
        return get_args(annotation)[0]
    if origin is dict and isinstance(part, str):
        return get_args(annotation)[1]
    if origin in (Union, types.UnionType):
        if part in BEHAVIOUR_MODELS:
            return BEHAVIOUR_MODELS[str(part)]
        for member in get_args(annotation):
            found = _step(member, part)
            if found is not None:
                return found
        return None
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        for name, info in annotation.model_fields.items():
            if part in (name, info.alias):
                return info.annotation
    return None
