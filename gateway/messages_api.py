"""Anthropic's Messages API (``POST /v1/messages``), as vLLM serves it: a Messages request read as
the chat request it amounts to (``as_chat_body``), so it runs through the same pipeline.

``system`` becomes the system message; ``messages`` the conversation, their content a string or
blocks: text, an assistant's ``tool_use`` (chat's tool call) and ``thinking`` (its reasoning), a
user's ``tool_result`` (chat's tool turn); ``max_tokens``, ``stop_sequences``, ``temperature``,
``top_p`` and ``top_k`` chat's sampling; ``tools`` (``input_schema``: the parameters) and
``tool_choice`` (auto, any, tool, none) chat's; ``thinking`` the chat template's
``enable_thinking`` (Qwen3's switch); ``output_config.format`` chat's JSON-schema response format.
Images, documents, Anthropic's server tools and fields the API does not have get a 400 naming
them. The answer's shape: gateway.messages_output.
"""
from __future__ import annotations

import json
from typing import Any

from engine.errors import InvalidRequestError
from gateway.openai_protocol import joined_text

_UNSUPPORTED = {"container": "containers", "mcp_servers": "MCP servers", "context_management": "context management"}
# fields a Messages request shares with chat completions (vLLM's extras among them)
_PASSED = ("model", "temperature", "top_p", "top_k", "min_p", "seed", "repetition_penalty", "priority",
           "cache_salt", "request_id", "chat_template_kwargs", "ignore_eos", "lookahead")
# read below; hints that change nothing here (prompt caching is automatic; no tiers, regions or effort levels)
_READ = {"max_tokens", "messages", "system", "stop_sequences", "stream", "tools", "tool_choice", "thinking",
         "output_config"}
_HINTS = {"metadata", "service_tier", "cache_control", "inference_geo", "speed", "user_profile_id", "workspace_id",
          "diagnostics"}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def as_chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions body a Messages request amounts to (checked: a 400 names the field)."""
    for key, what in _UNSUPPORTED.items():
        if body.get(key) not in (None, [], ""):
            raise InvalidRequestError(key, f"{what} are not supported by this server")
    unknown = sorted(set(body) - _READ - _HINTS - set(_PASSED) - set(_UNSUPPORTED))
    if unknown:  # as Anthropic's API: a field it does not know is an error, not ignored
        raise InvalidRequestError(unknown[0], "is not a field of the Messages API here")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidRequestError("max_tokens", "is required: a positive integer")
    chat: dict[str, Any] = {k: body[k] for k in _PASSED if body.get(k) is not None}
    chat["max_tokens"] = max_tokens
    system = body.get("system")
    messages = [] if system is None else [{"role": "system", "content": joined_text(system, "system")}]
    chat["messages"] = messages + _messages(body.get("messages"))
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise InvalidRequestError("stop_sequences", "must be a list of non-empty strings")
        chat["stop"] = stops
    chat.update(_tools(body))
    fmt = (body.get("output_config") or {}).get("format") if isinstance(body.get("output_config"), dict) else None
    if fmt is not None:  # structured output (a JSON schema)
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise InvalidRequestError("output_config", 'format must be {"type": "json_schema", "schema": {...}}')
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}
    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind not in ("enabled", "disabled", "adaptive"):
            raise InvalidRequestError("thinking", 'type must be "enabled", "adaptive" or "disabled"')
        chat["chat_template_kwargs"] = {**chat.get("chat_template_kwargs", {}), "enable_thinking": kind != "disabled"}
    return chat


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise InvalidRequestError("messages", "must be a non-empty list of {role, content}")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(value):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            raise InvalidRequestError(f"messages[{i}].role", 'must be "user" or "assistant"')
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise InvalidRequestError(f"messages[{i}].content", "must be a string or a list of content blocks")
        out += _assistant_turn(content, i) if role == "assistant" else _user_turn(content, i)
    return out


def _user_turn(blocks: list[Any], i: int) -> list[dict[str, Any]]:
    """A user's blocks: its tool results first (chat's tool turns, in order), then its text."""
    results, text = [], []
    for j, b in enumerate(blocks):
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text" and isinstance(b.get("text"), str):
            text.append(b["text"])
        elif kind == "tool_result" and isinstance(b.get("tool_use_id"), str):
            content = b.get("content", "")
            answer = joined_text(content, f"messages[{i}].content[{j}].content") if content else ""
            results.append({"role": "tool", "tool_call_id": b["tool_use_id"],
                            "content": f"Error: {answer}" if b.get("is_error") else answer})
        else:
            raise InvalidRequestError(f"messages[{i}].content[{j}]", f"{kind!r} blocks are not supported here "
                                                                     "(text and tool_result are)")
    return results + ([{"role": "user", "content": "".join(text)}] if text or not results else [])


def _assistant_turn(blocks: list[Any], i: int) -> list[dict[str, Any]]:
    """An assistant's blocks as one turn: its text, its tool_use blocks as calls, its thinking."""
    turn: dict[str, Any] = {"role": "assistant", "content": ""}
    for j, b in enumerate(blocks):
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text" and isinstance(b.get("text"), str):
            turn["content"] += b["text"]
        elif kind == "tool_use" and isinstance(b.get("id"), str) and isinstance(b.get("name"), str):
            turn.setdefault("tool_calls", []).append({"id": b["id"], "type": "function", "function": {
                "name": b["name"], "arguments": json.dumps(b.get("input") or {}, ensure_ascii=False)}})
        elif kind == "thinking" and isinstance(b.get("thinking"), str):
            turn["reasoning_content"] = turn.get("reasoning_content", "") + b["thinking"]
        elif kind != "redacted_thinking":  # (encrypted: nothing a template can read)
            raise InvalidRequestError(f"messages[{i}].content[{j}]", f"{kind!r} blocks are not supported here "
                                                                     "(text, tool_use and thinking are)")
    return [turn]


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    """``tools`` ({name, description, input_schema}) and ``tool_choice`` as chat's."""
    out: dict[str, Any] = {}
    tools = body.get("tools")
    if tools not in (None, []):
        if not isinstance(tools, list):
            raise InvalidRequestError("tools", "must be a list of tools")
        out["tools"] = []
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or t.get("type", "custom") != "custom" or not isinstance(t.get("name"), str):
                kind = t.get("type") if isinstance(t, dict) else None
                raise InvalidRequestError(f"tools[{i}]", f"only client tools ({{name, input_schema}}) are supported "
                                                         f"here, not {kind!r}")
            out["tools"].append({"type": "function", "function": {
                "name": t["name"], **({"description": t["description"]} if t.get("description") else {}),
                "parameters": t.get("input_schema") or {"type": "object", "properties": {}}}})
    choice = body.get("tool_choice")
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind == "tool" and isinstance(choice.get("name"), str):
            out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        elif kind in _TOOL_CHOICES:
            out["tool_choice"] = _TOOL_CHOICES[kind]
        else:
            raise InvalidRequestError("tool_choice", 'type must be "auto", "any", "none" or "tool" (with a name)')
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    return out


# chat's names for what a Messages request calls otherwise
_FIELDS = {"stop": "stop_sequences", "response_format": "output_config"}


def name_messages_error(exc: InvalidRequestError) -> InvalidRequestError:
    """An error found in the chat request a Messages request became, under the field the client set."""
    field = _FIELDS.get(exc.field or "")
    return exc if field is None else InvalidRequestError(field, exc.message)
