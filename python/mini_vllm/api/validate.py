"""Request checks pydantic's types cannot express: text that is valid Unicode, tool schemas of the right shape.

JSON may carry a lone surrogate ("\\ud800"), which Python parses but no tokenizer can encode, and a tool's
`parameters` is free-form JSON that the harmony renderer walks (`properties` as an object, `required`
as a list of names). Both used to crash deep in a handler (HTTP 500); these checks run during request
validation so the client gets a 400 naming the field. Errors carry the field path in `ctx["param"]`,
which errors.py reports as the OpenAI `param`.
"""
from __future__ import annotations

from typing import Any

from pydantic_core import PydanticCustomError

_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf")


def _bad(param: str, message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_field", message, {"param": param})


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def first_lone_surrogate(data: Any, path: str = "") -> None:
    """Raise (naming the field, e.g. `messages.0.content`) at the first string holding a lone surrogate."""
    if isinstance(data, str):
        if _has_surrogate(data):
            raise _bad(path, "contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not valid "
                       "Unicode text; send the character itself or drop it")
    elif isinstance(data, dict):
        for k, v in data.items():
            sub = _join(path, k)
            if isinstance(k, str) and _has_surrogate(k):
                raise _bad(sub, "key contains a lone UTF-16 surrogate")
            if isinstance(v, (str, dict, list)):
                first_lone_surrogate(v, sub)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            if isinstance(v, (str, dict, list)):   # token-id lists: ints are skipped cheaply
                first_lone_surrogate(v, _join(path, i))


def check_json_schema(node: Any, path: str = "") -> None:
    """The parts of a JSON Schema the tool renderer reads must have their JSON-Schema types
    (`path` is relative to the validated field; errors.py prefixes the field's own location)."""
    if isinstance(node, bool):           # `true` / `false` are valid schemas
        return
    if not isinstance(node, dict):
        raise _bad(path, "must be a JSON Schema object")
    props = node.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            raise _bad(_join(path, "properties"), "must be an object mapping property names to schemas")
        for name, sub in props.items():
            check_json_schema(sub, _join(_join(path, "properties"), name))
    required = node.get("required")
    if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        raise _bad(_join(path, "required"), "must be an array of property names (strings)")
    items = node.get("items")
    if items is not None:
        for i, sub in enumerate(items) if isinstance(items, list) else [(None, items)]:
            check_json_schema(sub, _join(path, "items") if i is None else _join(_join(path, "items"), i))
    for key in _SUBSCHEMA_LISTS:
        subs = node.get(key)
        if subs is not None:
            if not isinstance(subs, list):
                raise _bad(_join(path, key), "must be an array of schemas")
            for i, sub in enumerate(subs):
                check_json_schema(sub, _join(_join(path, key), i))
