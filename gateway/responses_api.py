"""OpenAI's Responses API (``POST /v1/responses``), text and function calls, as vLLM serves it.

A Responses request is read as the chat request it amounts to (``as_chat_body``): ``instructions``
become a system message, ``input`` the conversation (messages, and function calls and their
outputs as chat's tool-calling turns), ``max_output_tokens`` max_tokens, ``text.format`` the
response format, function ``tools`` and ``tool_choice`` chat's; from there it is a chat completion
through the same pipeline. The answer is shaped as a Response object (``ResponseObject``: a
message, or function calls and the text around them), or streamed as Responses events. Responses
are stored, and continued by ``previous_response_id``, by gateway.response_store.
"""
from __future__ import annotations

from typing import Any, Sequence

from engine.errors import InvalidRequestError
from gateway.openai_protocol import joined_text

# fields of the Responses API that a text-only server cannot honour: a 400 names them
_UNSUPPORTED = {
    "conversation": "conversation objects (continue a response with previous_response_id)",
    "prompt": "prompt templates",
}
_PARTS = ("input_text", "output_text")  # the text parts of an input item's content
OUTPUT_LOGPROBS = "message.output_text.logprobs"  # the one ``include`` a text-only server has
# sampling fields a Responses request shares with chat completions (vLLM's extras included)
_PASSED = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
           "repetition_penalty", "stop", "stop_token_ids", "ignore_eos", "min_tokens", "logit_bias", "lookahead",
           "bad_words", "allowed_token_ids", "skip_special_tokens", "truncate_prompt_tokens",
           "chat_template_kwargs", "model", "priority", "cache_salt", "request_id", "top_logprobs",
           "parallel_tool_calls")


def as_chat_body(body: dict[str, Any], history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The chat-completions body a Responses request amounts to (checked: a 400 names the field);
    ``history``: the turns of the response it continues (``previous_response_id``), before its input."""
    for key, what in _UNSUPPORTED.items():
        if body.get(key) not in (None, [], ""):
            raise InvalidRequestError(key, f"{what} is not supported by this server")
    metadata = body.get("metadata")
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise InvalidRequestError("metadata", "must be an object of strings")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise InvalidRequestError("stream_options", "only allowed with stream: true")
    chat: dict[str, Any] = {k: body[k] for k in _PASSED if body.get(k) is not None}
    messages = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequestError("instructions", "must be a string")
        messages.append({"role": "system", "content": instructions})
    chat["messages"] = messages + list(history) + _input_messages(body.get("input"))
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
        if isinstance(chat["max_tokens"], bool) or not isinstance(chat["max_tokens"], int):
            raise InvalidRequestError("max_output_tokens", "must be an integer")
    fmt = _text_format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise InvalidRequestError("truncation", 'must be "auto" or "disabled"')
    if wants_logprobs(body):
        chat["logprobs"] = True
    chat.update(_chat_tools(body))
    reasoning = body.get("reasoning")
    if reasoning is not None:  # {"effort": ...}: chat's reasoning_effort (a summary is not made here)
        if not isinstance(reasoning, dict):
            raise InvalidRequestError("reasoning", 'must be an object, e.g. {"effort": "low"}')
        if reasoning.get("effort") is not None:
            chat["reasoning_effort"] = reasoning["effort"]
    return chat


def _chat_tools(body: dict[str, Any]) -> dict[str, Any]:
    """Function ``tools`` (flat here: ``{"type": "function", "name", "parameters"}``) and
    ``tool_choice`` (``{"type": "function", "name"}`` for one) as chat's."""
    out: dict[str, Any] = {}
    tools = body.get("tools")
    if tools not in (None, []):
        if not isinstance(tools, list):
            raise InvalidRequestError("tools", "must be a list of function tools")
        out["tools"] = []
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or t.get("type") != "function":
                kind = t.get("type") if isinstance(t, dict) else None
                raise InvalidRequestError(f"tools[{i}]", f"only function tools are supported here (not {kind!r})")
            out["tools"].append({"type": "function", "function": {
                k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None}})
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise InvalidRequestError("tool_choice", 'must be "none", "auto", "required" or {"type": "function", "name": ...}')
        choice = {"type": "function", "function": {"name": choice["name"]}}
    if choice is not None:
        out["tool_choice"] = choice
    return out


def truncation(body: dict[str, Any], kept: int | None, context: int) -> int | None:
    """The prompt tokens kept: ``kept`` (vLLM's ``truncate_prompt_tokens``), else with
    ``truncation: "auto"`` a conversation longer than the context loses its start, leaving room
    for ``max_output_tokens`` (or one token), instead of failing the request."""
    if kept is None and body.get("truncation") == "auto":
        return max(1, context - (body.get("max_output_tokens") or 1))
    return kept


def wants_logprobs(body: dict[str, Any]) -> bool:
    """The output's logprobs: ``include`` names them (``top_logprobs`` alone asks for them too)."""
    include = body.get("include")
    if include is not None and not (isinstance(include, list) and all(i == OUTPUT_LOGPROBS for i in include)):
        raise InvalidRequestError("include", f"only {OUTPUT_LOGPROBS!r} can be included here")
    return bool(include) or body.get("top_logprobs") is not None


def _input_messages(value: Any) -> list[dict[str, Any]]:
    """``input``: a string (one user message) or a list of items: messages {role, content} with
    content a string or text parts (input_text, output_text), "developer" as the system role;
    ``function_call`` items (the model's calls, as a response gave them) as an assistant turn's
    tool calls, ``function_call_output`` items as the tools' answers, and ``reasoning`` items as the
    next assistant turn's thinking."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidRequestError("input", "must be a string or a non-empty list of messages")
    out: list[dict[str, Any]] = []
    thought: str | None = None  # a reasoning item's text, for the assistant turn it goes before
    for i, item in enumerate(value):
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "reasoning":  # an earlier answer's thinking, as a response gave it
            thought = (thought or "") + "".join(
                p.get("text", "") for p in item.get("content") or [] if isinstance(p, dict))
            continue
        if kind == "function_call":
            call = _function_call(item, i)
            if out and out[-1]["role"] == "assistant" and not thought:  # the turn's text, or its earlier calls
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
            if thought:  # the thinking before the turn, for templates that render it
                out[-1]["reasoning_content"], thought = thought, None
            continue
        if kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise InvalidRequestError(f"input[{i}].call_id", "must be a string")
            out.append({"role": "tool", "tool_call_id": item["call_id"],
                        "content": joined_text(item.get("output"), f"input[{i}].output", _PARTS)})
            continue
        if kind != "message":
            raise InvalidRequestError(f"input[{i}]", "only message, reasoning, function_call and "
                                                     "function_call_output items are supported")
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequestError(f"input[{i}].role", "must be one of user, assistant, system, developer")
        content = joined_text(item.get("content"), f"input[{i}].content", _PARTS)
        out.append({"role": "system" if role == "developer" else role, "content": content})
        if role == "assistant" and thought:
            out[-1]["reasoning_content"], thought = thought, None
    return out


def input_items(body: dict[str, Any], suffix: str) -> list[dict[str, Any]]:
    """The request's ``input`` as the Responses API lists it back (``GET .../input_items``): each
    item with an id (its own, or ``msg_<suffix>_in<k>`` and the like) and status; a string or a
    message's text as text parts (``input_text``; an assistant's ``output_text``). ``input``: as
    ``as_chat_body`` checked it."""
    value = body.get("input")
    items = [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else value
    out = []
    for k, item in enumerate(items):
        item = {"type": "message", **item}
        if item["type"] == "message" and isinstance(item.get("content"), str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": item["content"]}]
        prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
        item.setdefault("id", f"{prefix.get(item['type'], 'item')}_{suffix}_in{k}")
        item.setdefault("status", "completed")
        out.append(item)
    return out


def _function_call(item: dict[str, Any], i: int) -> dict[str, Any]:
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise InvalidRequestError(f"input[{i}].{key}", "must be a string")
    return {"id": item["call_id"], "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]}}


def _text_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format`` (a json_schema's name and schema sit on the
    format itself here, under ``json_schema`` there)."""
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise InvalidRequestError("text", 'format.type must be "text", "json_object" or "json_schema"')
    if fmt["type"] == "json_schema":
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}}
    return {"type": fmt["type"]}


# chat's names for what a Responses request calls otherwise
_FIELDS = {"max_tokens": "max_output_tokens", "response_format": "text", "messages": "input", "logprobs": "include",
           "reasoning_effort": "reasoning"}


def name_responses_error(exc: InvalidRequestError) -> InvalidRequestError:
    """An error found in the chat request a Responses request became, under the field the client set."""
    field = _FIELDS.get(exc.field or "")
    return exc if field is None else InvalidRequestError(field, exc.message)
