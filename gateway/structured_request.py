"""Structured output as requests ask for it: OpenAI's ``response_format`` (json_object,
json_schema) and vLLM's ``guided_json`` / ``guided_regex`` / ``guided_choice`` /
``guided_grammar`` and ``structured_outputs``, each turned into one StructuredSpec (the engine's
grammar; engine.structured)."""
from __future__ import annotations

import json
from typing import Any

from engine.errors import InvalidRequestError
from engine.structured import StructuredSpec

# where a request may ask for structured output: OpenAI's response_format, vLLM's guided_* and structured_outputs
STRUCTURED_FIELDS = ("response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
                     "structured_outputs")


def _structured_source(body: dict[str, Any]) -> str | None:
    given = [k for k in STRUCTURED_FIELDS if body.get(k) is not None
             and not (isinstance(body[k], dict) and k == "response_format" and body[k].get("type") == "text")]
    if len(given) > 1:
        raise InvalidRequestError(given[1], f"only one way to ask for structured output at a time (also {given[0]})")
    return given[0] if given else None


def _schema_text(field: str, schema: Any) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise InvalidRequestError(field, f"the schema is not JSON: {e}") from None
    if not isinstance(schema, dict):
        raise InvalidRequestError(field, "the schema must be a JSON object")
    return json.dumps(schema)


def _by_kind(field: str, kind: str, value: Any) -> StructuredSpec:
    """vLLM's forms: json (a schema), regex, choice (a list of strings), grammar (EBNF)."""
    if kind == "json":
        return StructuredSpec("json_schema", _schema_text(field, value))
    if kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise InvalidRequestError(field, "the choices must be a non-empty list of non-empty strings")
        return StructuredSpec("choice", json.dumps(value))
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(field, f"the {kind} must be a non-empty string")
    return StructuredSpec(kind, value)  # type: ignore[arg-type]


def structured_from_body(body: dict[str, Any]) -> StructuredSpec | None:
    """The grammar a request's output must follow, from whichever field asked for one."""
    field = _structured_source(body)
    if field is None:
        return None
    value = body[field]
    if field == "response_format":
        kind = value.get("type") if isinstance(value, dict) else None
        if kind == "json_object":
            return StructuredSpec("json")
        if kind == "json_schema":
            schema = (value.get("json_schema") or {}).get("schema") if isinstance(value.get("json_schema"), dict) else None
            if schema is None:
                raise InvalidRequestError(field, "json_schema.schema is required")
            return StructuredSpec("json_schema", _schema_text(field, schema))
        raise InvalidRequestError(field, 'type must be "text", "json_object" or "json_schema"')
    if field == "structured_outputs":
        forms = {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else {}
        if forms == {"json_object": True}:
            return StructuredSpec("json")
        forms.pop("json_object", None)
        if len(forms) != 1 or next(iter(forms)) not in ("json", "regex", "choice", "grammar"):
            raise InvalidRequestError(field, "must give one of json, regex, choice, grammar or json_object: true")
        (kind, form), = forms.items()
        return _by_kind(field, kind, form)
    return _by_kind(field, field.removeprefix("guided_"), value)


def name_structured_error(exc: InvalidRequestError, body: dict[str, Any]) -> InvalidRequestError:
    """A grammar that does not compile is found by a worker, which names the field "structured":
    the client hears the name of its own field (a tool call's grammar: its tools' schemas)."""
    if exc.field != "structured":
        return exc
    tools = "tools" if body.get("tool_choice") not in (None, "none") else None
    return InvalidRequestError(_structured_source(body) or tools or exc.field, exc.message)
