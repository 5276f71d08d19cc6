"""Function tools' JSON schemas as the TypeScript-like `namespace functions { ... }` block.

GPT-OSS was trained on tool definitions written this way (see the model's chat template), so the
developer message describes OpenAI-style `tools` in the same shape the model saw in training.
"""
from __future__ import annotations

import json
from typing import Any

_SCALARS = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
            "null": "null"}


def ts_type(spec: Any) -> str:
    """One JSON-schema node as a TypeScript type expression."""
    if not isinstance(spec, dict):
        return "any"
    nullable = " | null" if spec.get("nullable") else ""
    typ = spec.get("type")
    if isinstance(typ, list) and typ:
        return " | ".join(_SCALARS.get(t, t) if isinstance(t, str) else "any" for t in typ)
    if "enum" in spec and isinstance(spec["enum"], list):
        return " | ".join(json.dumps(v) for v in spec["enum"]) + nullable
    for key in ("oneOf", "anyOf"):
        variants = spec.get(key)
        if isinstance(variants, list) and variants:
            if len(variants) > 1 and any(isinstance(v, dict) and v.get("type") == "object" for v in variants):
                return "any"
            return " | ".join(ts_type(v) for v in variants)
    if typ == "array":
        items = spec.get("items")
        inner = ts_type(items) if items else "any"
        if " " in inner and not inner.startswith("{"):
            inner = f"({inner})" if len(inner) <= 50 else "any"
        return inner + "[]" + nullable
    if typ == "object":
        props = spec.get("properties")
        if isinstance(props, dict) and props:
            required = set(spec.get("required") or [])
            fields = [f"{name}{'' if name in required else '?'}: {ts_type(sub)}" for name, sub in props.items()]
            return "{\n" + ",\n".join(fields) + "\n}" + nullable
        return "object" + nullable
    if isinstance(typ, str) and typ in _SCALARS:
        return _SCALARS[typ] + nullable
    return "any"


def _param_lines(parameters: dict[str, Any]) -> list[str]:
    required = set(parameters.get("required") or [])
    lines = []
    for name, spec in (parameters.get("properties") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        if spec.get("description"):
            lines.append(f"// {spec['description']}")
        line = f"{name}{'' if name in required else '?'}: {ts_type(spec)},"
        if "default" in spec:
            default = spec["default"]
            line += f" // default: {default if isinstance(default, str) else json.dumps(default)}"
        lines.append(line)
    return lines


def render_functions_namespace(tools: list[dict[str, Any]]) -> str:
    """`## functions` + the namespace block for OpenAI `tools` entries ({"type": "function", "function": {...}})."""
    out = ["## functions", "", "namespace functions {", ""]
    for tool in tools:
        fn = tool.get("function", tool)
        if fn.get("description"):
            out.append(f"// {fn['description']}")
        params = fn.get("parameters") or {}
        if isinstance(params, dict) and params.get("properties"):
            out.append(f"type {fn['name']} = (_: {{")
            out.extend(_param_lines(params))
            out.append("}) => any;")
        else:
            out.append(f"type {fn['name']} = () => any;")
        out.append("")
    out.append("} // namespace functions")
    return "\n".join(out)
