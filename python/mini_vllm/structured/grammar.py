"""API request fields -> one Lark grammar for llguidance (or a 400 naming the field).

OpenAI's `response_format` ({"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}}),
vLLM's `structured_outputs` ({"json": ..., "regex": ..., "choice": [...], "grammar": ..., "json_object": true})
and its older `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar`, and `tool_choice` "required"
or a named function. For chat the answer is wrapped in harmony: an optional analysis message, then the final
channel carrying the constrained body (or a tool-call message whose arguments follow the tool's schema).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class ConstraintError(ValueError):
    """A constraint we cannot honour (the API answers 400 naming `param`)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Body:
    """The constrained part of an answer: one Lark rule body, and the request field it came from."""

    rule: str
    param: str
    full: str | None = None          # a whole Lark grammar of the user's (completions only)


def _string(text: str) -> str:
    return json.dumps(text)           # a JSON string literal is a Lark string literal


def _compact(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with JSON written without optional whitespace (unless it says otherwise itself)."""
    return schema if "x-guidance" in schema else {**schema, "x-guidance": {"whitespace_flexible": False}}


def _json(schema: Any, param: str, compact: bool = False) -> Body:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            raise ConstraintError("the JSON schema is not valid JSON", param) from None
    if not isinstance(schema, dict):
        raise ConstraintError("the JSON schema must be an object", param)
    return Body(f"%json {json.dumps(_compact(schema) if compact else schema)}", param)


def _regex(pattern: Any, param: str) -> Body:
    if not isinstance(pattern, str) or not pattern:
        raise ConstraintError("the regex must be a non-empty string", param)
    return Body("/" + pattern.replace("/", "\\/") + "/", param)


def _choice(options: Any, param: str) -> Body:
    if not isinstance(options, list) or not options or not all(isinstance(o, str) and o for o in options):
        raise ConstraintError("choice must be a non-empty list of non-empty strings", param)
    return Body(" | ".join(_string(o) for o in options), param)


def body_from_request(response_format: Any, structured_outputs: Any, guided: dict[str, Any]) -> Body | None:
    """The one constraint a request asks for (None: none); more than one is a 400."""
    found: list[Body] = []
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "json_object":
            found.append(Body('%json {"type": "object"}', "response_format"))
        elif kind == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema", spec.get("json_schema")) if isinstance(spec, dict) else None
            if schema is None:
                raise ConstraintError("json_schema.schema is required", "response_format.json_schema")
            found.append(_json(schema, "response_format.json_schema.schema"))
        elif kind not in ("text", None):
            raise ConstraintError(f"response_format type {kind!r} is not supported (text, json_object, "
                                  "json_schema)", "response_format.type")
    so = structured_outputs or {}
    if not isinstance(so, dict):
        raise ConstraintError("structured_outputs must be an object", "structured_outputs")
    compact = bool(so.get("disable_any_whitespace"))
    for key, value in so.items():
        if value is None or value is False:
            continue
        param = f"structured_outputs.{key}"
        if key == "json":
            found.append(_json(value, param, compact))
        elif key == "json_object":
            found.append(_json({"type": "object"}, param, compact))
        elif key == "regex":
            found.append(_regex(value, param))
        elif key == "choice":
            found.append(_choice(value, param))
        elif key == "grammar":
            found.append(_grammar(value, param))
        elif key not in ("disable_fallback", "disable_any_whitespace", "disable_additional_properties",
                         "whitespace_pattern", "backend"):
            raise ConstraintError(f"structured_outputs.{key} is not supported (json, regex, choice, grammar, "
                                  "json_object)", param)
    for key, make in (("guided_json", _json), ("guided_regex", _regex), ("guided_choice", _choice)):
        if guided.get(key) is not None:
            found.append(make(guided[key], key))
    if guided.get("guided_grammar") is not None:
        found.append(_grammar(guided["guided_grammar"], "guided_grammar"))
    if len(found) > 1:
        raise ConstraintError(f"only one constraint per request: got {', '.join(b.param for b in found)}",
                              found[1].param)
    return found[0] if found else None


def _grammar(text: Any, param: str) -> Body:
    """A user's whole Lark grammar (llguidance's dialect), used as given on /v1/completions."""
    if not isinstance(text, str) or "start" not in text:
        raise ConstraintError("the grammar must be Lark text with a `start` rule", param)
    return Body("", param, full=text)


def completion_grammar(body: Body) -> str:
    """/v1/completions: the text itself is constrained."""
    return body.full if body.full is not None else f"start: body\nbody: {body.rule}\n"


# ---- chat (harmony) -----------------------------------------------------------------------------
_ANALYSIS = ('analysis: <|channel|> "analysis" <|message|> TEXT <|end|> <|start|> "assistant"\n'
             "TEXT: /(.|\\n)*/\n")


def chat_grammar(body: Body) -> str:
    """Optional reasoning, then the constrained answer on the final channel."""
    if body.full is not None:
        raise ConstraintError("a Lark grammar is supported on /v1/completions only (chat answers are wrapped "
                              "in harmony); use json, regex or choice here", body.param)
    return ("start: analysis? final\n" + _ANALYSIS +
            'final: <|channel|> "final" <|message|> body <|return|>\n' + f"body: {body.rule}\n")


def tool_call_grammar(tools: list[dict[str, Any]], only: str | None) -> str:
    """Optional reasoning, then a call of one of `tools` (or of `only`) with arguments per its schema,
    written compactly as GPT-OSS writes tool arguments (no optional whitespace between JSON tokens)."""
    chosen = [t for t in tools if only is None or t["function"]["name"] == only]
    if not chosen:
        raise ConstraintError(f"tool_choice names {only!r}, which is not among the request's tools", "tool_choice")
    rules = []
    for i, t in enumerate(chosen):
        fn = t["function"]
        schema = _compact(fn.get("parameters") or {"type": "object"})
        rules.append(f"tool{i}: {_string(fn['name'] + ' ')} <|constrain|> \"json\" <|message|> %json {json.dumps(schema)}")
    return ("start: analysis? call\n" + _ANALYSIS +
            'call: <|channel|> "commentary to=functions." (' + " | ".join(f"tool{i}" for i in range(len(chosen))) +
            ") <|call|>\n" + "\n".join(rules) + "\n")
