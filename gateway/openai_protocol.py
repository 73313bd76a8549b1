"""OpenAI request parsing (completions and chat), independent of the server; the responses' shape:
gateway.openai_response."""
from __future__ import annotations

import json
from typing import Any, Mapping, NamedTuple

from engine.errors import InvalidRequestError
from engine.generation_defaults import API_MAX_TOKENS, with_defaults
from engine.sampling_params import INT32, MAX_LOGPROBS, SamplingParams
from gateway.structured_request import structured_from_body
from gateway.tools import template_tools

REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
CHAT_MAX_TOKENS = 4096  # a chat's output limit when none is given: until the context's end or a stop
_SAMPLING_KEYS = {
    "temperature": float, "top_p": float, "top_k": int, "min_p": float, "seed": int,
    "presence_penalty": float, "frequency_penalty": float, "repetition_penalty": float,
}


def _typed(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body[key]
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (bool, str) and isinstance(value, kind):
        return value
    raise InvalidRequestError(key, "must be " + {float: "a number", int: "an integer", bool: "a boolean", str: "a string"}[kind])


def _list_of(body: dict[str, Any], key: str, kind: type, what: str, non_empty: bool = False) -> tuple[Any, ...]:
    """``body[key]`` as a tuple, if it is a list of ``kind`` (booleans are not integers here)."""
    value = body[key]
    if not isinstance(value, list) or (non_empty and not value) \
            or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise InvalidRequestError(key, f"must be {what}")
    return tuple(value)


def asked_max_tokens(body: dict[str, Any], chat: bool) -> str | None:
    """The field that sets the request's output limit, if the client set one (chat's
    ``max_completion_tokens`` before its ``max_tokens``); None: the default applies."""
    if chat and body.get("max_completion_tokens") is not None:
        return "max_completion_tokens"
    return "max_tokens" if body.get("max_tokens") is not None else None


def sampling_from_body(body: dict[str, Any], chat: bool, defaults: Mapping[str, Any] | None = None) -> SamplingParams:
    """The request's sampling parameters: its own fields over ``defaults`` (the served model's,
    engine.generation_defaults)."""
    if not isinstance(body, dict):
        raise InvalidRequestError("body", "must be a JSON object")
    kwargs: dict[str, Any] = {k: _typed(body, k, t) for k, t in _SAMPLING_KEYS.items() if body.get(k) is not None}
    max_key = asked_max_tokens(body, chat)
    if max_key is not None:
        kwargs["max_tokens"] = _typed(body, max_key, int)
    stop = body.get("stop")
    if stop is not None:
        kwargs["stop"] = (stop,) if isinstance(stop, str) else _list_of(body, "stop", str, "a string or a list of strings")
    for key, kind, what in (("stop_token_ids", int, "a list of integers"), ("bad_words", str, "a list of strings"),
                            ("allowed_token_ids", int, "a non-empty list of token ids")):
        if body.get(key) is not None:
            kwargs[key] = _list_of(body, key, kind, what, non_empty=key == "allowed_token_ids")
    for key in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
        if body.get(key) is not None:
            kwargs[key] = _typed(body, key, bool)
    if body.get("min_tokens") is not None:
        kwargs["min_tokens"] = _typed(body, "min_tokens", int)
    if body.get("logit_bias") is not None:
        kwargs["logit_bias"] = _logit_bias(body["logit_bias"])
    if body.get("lookahead") is not None:
        kwargs["lookahead"] = _typed(body, "lookahead", bool)
    structured = structured_from_body(body)
    if structured is not None:
        kwargs["structured"] = structured
    if chat:
        if body.get("logprobs"):
            kwargs["logprobs"] = _typed(body, "top_logprobs", int) if body.get("top_logprobs") is not None else 0
    elif body.get("logprobs") is not None:
        kwargs["logprobs"] = _typed(body, "logprobs", int)
    try:
        return SamplingParams(**with_defaults(kwargs, defaults or {}, CHAT_MAX_TOKENS if chat else API_MAX_TOKENS))
    except InvalidRequestError as e:
        if chat and e.field == "logprobs":  # chat's count of alternatives is top_logprobs
            raise InvalidRequestError("top_logprobs", e.message) from None
        raise


# fields of OpenAI's or vLLM's API that Grove does not implement: a request that sets one gets a
# 400 naming it, not an answer that quietly ignored it (unknown fields are ignored, as vLLM does)
_UNSUPPORTED = {
    "functions": "legacy function calling (use tools)",
    "suffix": "suffix (insertion)",
    "prompt_embeds": "vLLM's prompt embeddings",
    "logits_processors": "vLLM's logits processors",
    "guided_whitespace_pattern": "vLLM's guided_whitespace_pattern",
    "structural_tag": "vLLM's structural tags",
}


def reject_unsupported(body: dict[str, Any], chat: bool) -> None:
    """A 400 for each field set to something Grove would otherwise ignore (its neutral values pass:
    no functions, ``best_of`` = n; tools are chat's, gateway.tools)."""
    for key, what in _UNSUPPORTED.items():
        if body.get(key) not in (None, [], ""):
            raise InvalidRequestError(key, f"{what} is not supported by this server")
    if not chat and (body.get("tools") not in (None, []) or body.get("tool_choice") not in (None, "none")):
        raise InvalidRequestError("tools", "tools are for chat completions")
    if body.get("function_call") not in (None, "none"):
        raise InvalidRequestError("function_call", "function calling is not supported by this server")
    best_of = body.get("best_of")
    if best_of is not None and best_of != (body.get("n") or 1):
        raise InvalidRequestError("best_of", "must equal n if given (ranking samples by likelihood is not supported)")


def prompt_logprobs_from_body(body: dict[str, Any]) -> int | None:
    """vLLM's ``prompt_logprobs``: each prompt token's logprob, rank and top-k, returned beside the
    choices (not streamed, as in vLLM). The request then computes its whole prompt (a cached prefix
    has no logits)."""
    if body.get("prompt_logprobs") is None:
        return None
    k = _typed(body, "prompt_logprobs", int)
    if not 0 <= k <= MAX_LOGPROBS:
        raise InvalidRequestError("prompt_logprobs", f"must be in [0, {MAX_LOGPROBS}], got {k}")
    if body.get("stream"):
        raise InvalidRequestError("prompt_logprobs", "not available with stream: true")
    return k


def priority_from_body(body: dict[str, Any]) -> int:
    """vLLM's ``priority``: lower is scheduled first and preempted last (engine.scheduler)."""
    if body.get("priority") is None:
        return 0
    priority = _typed(body, "priority", int)
    if not -INT32 <= priority < INT32:
        raise InvalidRequestError("priority", "must fit in 32 bits")
    return priority


def _text(body: dict[str, Any], key: str) -> str | None:
    """A string field that, when given, is not empty (absent or null: None)."""
    if body.get(key) is None:
        return None
    value = _typed(body, key, str)
    if not value:
        raise InvalidRequestError(key, "must be a non-empty string if given")
    return value


def cache_salt_from_body(body: dict[str, Any]) -> str:
    """vLLM's ``cache_salt``: the request shares cached prefixes (and lookahead drafts) only with
    requests of the same salt, so cache hits and timings tell nothing about other tenants' prompts."""
    return _text(body, "cache_salt") or ""


def client_request_id(body: dict[str, Any], header: str | None) -> tuple[str, str] | None:
    """vLLM's ``request_id`` (the body's), else the ``X-Request-Id`` header's, with the field it
    came from (checked by GatewayCore.request_ids); None when neither."""
    given = _text(body, "request_id")
    if given is not None:
        return given, "request_id"
    return (header, "X-Request-Id") if header is not None else None


def truncation_from_body(body: dict[str, Any]) -> int | None:
    """vLLM's ``truncate_prompt_tokens``: the prompt's last k tokens only (checked by the core)."""
    return None if body.get("truncate_prompt_tokens") is None else _typed(body, "truncate_prompt_tokens", int)


class StreamUsage(NamedTuple):
    """``stream_options``: a last chunk with the request's usage (``include_usage``), and with
    vLLM's ``continuous_usage_stats`` each chunk with its choice's usage so far too."""

    last: bool
    continuous: bool


def stream_usage_from_body(body: dict[str, Any], force: bool = False) -> StreamUsage:
    """``force``: a last chunk with the usage whatever the request asks (vLLM's
    ``--enable-force-include-usage``)."""
    opts = body.get("stream_options")
    if opts is None:
        return StreamUsage(force and bool(body.get("stream")), False)
    if not body.get("stream"):
        raise InvalidRequestError("stream_options", "only allowed with stream: true")
    if not isinstance(opts, dict):
        raise InvalidRequestError("stream_options", "must be an object")
    flags = {}
    for key in ("include_usage", "continuous_usage_stats"):
        value = opts.get(key)
        if value is not None and not isinstance(value, bool):
            raise InvalidRequestError("stream_options", f"{key} must be a boolean")
        flags[key] = bool(value)
    # as in vLLM: the chunks' usage comes with the last chunk's
    last = flags["include_usage"] or force
    return StreamUsage(last, last and flags["continuous_usage_stats"])


def flag(body: dict[str, Any], key: str, default: bool = False) -> bool:
    """A boolean field (absent or null: ``default``)."""
    return _typed(body, key, bool) if body.get(key) is not None else default


def wants_echo(body: dict[str, Any]) -> bool:
    """``echo``. Completions': the prompt's text goes before each of its choices' text (and with
    ``logprobs``, the prompt tokens' logprobs before the output's: what evaluation harnesses read).
    Chat's (vLLM's): the last message, if the assistant's (an answer to go on with), goes before
    each choice's content."""
    return flag(body, "echo")


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``{"token id": bias}`` (JSON keys are strings) as (id, bias) pairs by id."""
    if not isinstance(value, dict):
        raise InvalidRequestError("logit_bias", 'must be an object of {"token id": bias}')
    pairs = []
    for key, bias in value.items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequestError("logit_bias", f"key {key!r} is not a token id") from None
        if not isinstance(bias, (int, float)) or isinstance(bias, bool):
            raise InvalidRequestError("logit_bias", f"the bias of token {key} must be a number")
        pairs.append((token, float(bias)))
    return tuple(sorted(pairs))


def choices_per_prompt(body: dict[str, Any], limit: int) -> int:
    """``n``: samples of each prompt (each its own request; with a seed, sample j takes seed + j).
    ``limit``: the most choices one request may ask for, prompts x n."""
    n = body.get("n")
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= limit:
        raise InvalidRequestError("n", f"must be an integer from 1 to {limit}")
    return n


def _token_ids(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)


def completion_prompts(body: dict[str, Any], limit: int, field: str = "prompt") -> list[str | list[int]]:
    """The prompts of a completion request (an embeddings request's ``input``): a string, a list
    of token ids, or a list of up to ``limit`` of either (a batch: one choice or ``n`` per prompt,
    in order)."""
    prompt = body.get(field)
    if isinstance(prompt, str) or (_token_ids(prompt) and prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or _token_ids(p) for p in prompt):
        if len(prompt) > limit:
            raise InvalidRequestError(field, f"{len(prompt)} prompts: at most {limit} in one request")
        return list(prompt)
    raise InvalidRequestError(field, "must be a string, a list of token ids, or a non-empty list of either")


def joined_text(value: Any, field: str, kinds: tuple[str, ...] = ("text",)) -> str:
    """A string, or a list of text parts (``{"type": kind, "text": ...}``, one of ``kinds``)
    joined: chat's content parts, the Responses API's input_text and output_text, the Messages
    API's text blocks."""
    if isinstance(value, list):
        if not all(isinstance(p, dict) and p.get("type") in kinds and isinstance(p.get("text"), str) for p in value):
            raise InvalidRequestError(field, f"only {' and '.join(kinds)} parts are supported")
        value = "".join(p["text"] for p in value)
    if not isinstance(value, str):
        raise InvalidRequestError(field, "must be a string or a list of text parts")
    return value


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise InvalidRequestError("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise InvalidRequestError(f"messages[{i}]", "must be an object")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}]
            content = joined_text(content, f"messages[{i}].content")
        if content is None and m.get("tool_calls"):
            content = ""  # an assistant turn that only called tools
        role = "system" if m.get("role") == "developer" else m.get("role")  # OpenAI's newer name for it
        msg = {"role": role, "content": content}
        # a tool-calling turn and a tool's answer keep what the chat template may render
        msg.update({k: m[k] for k in ("tool_call_id", "name") if m.get(k) is not None})
        thought = m.get("reasoning_content", m.get("reasoning"))  # an earlier answer's thinking, for templates
        if isinstance(thought, str):  # that render it (Qwen3's, interleaved thinking)
            msg["reasoning_content"] = thought
        if m.get("tool_calls"):
            msg["tool_calls"] = _template_calls(m["tool_calls"], i)
        out.append(msg)
    return out


def _template_calls(calls: Any, i: int) -> list[Any]:
    """An assistant turn's tool calls as chat templates read them: OpenAI's API carries a call's
    arguments as a JSON string, templates (Qwen's, Llama's) write them with ``tojson``, so they get
    the object (as vLLM and transformers give them)."""
    if not isinstance(calls, list):
        raise InvalidRequestError(f"messages[{i}].tool_calls", "must be a list")
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            try:
                arguments = json.loads(fn["arguments"])
            except json.JSONDecodeError:
                raise InvalidRequestError(f"messages[{i}].tool_calls", "a call's arguments must be JSON") from None
            call = {**call, "function": {**fn, "arguments": arguments}}
        out.append(call)
    return out


def special_tokens_from_body(body: dict[str, Any]) -> bool:
    """vLLM's ``add_special_tokens`` of a completion's prompt text: the tokenizer's own (a BOS) are
    added unless it is false. (A chat's is among its template options, false by default: the
    template writes its own.)"""
    return True if body.get("add_special_tokens") is None else _typed(body, "add_special_tokens", bool)


def chat_template_options(body: dict[str, Any]) -> dict[str, Any]:
    """vLLM's chat-template fields: apply_chat_template's keyword arguments."""
    options: dict[str, Any] = {}
    for key in ("add_generation_prompt", "continue_final_message", "add_special_tokens"):
        if body.get(key) is not None:
            options[key] = _typed(body, key, bool)
    if body.get("chat_template") is not None:  # the request's own (GatewayCore.token_ids: if trusted)
        options["chat_template"] = _typed(body, "chat_template", str)
    if options.get("continue_final_message") and "add_generation_prompt" not in options:
        options["add_generation_prompt"] = False  # vLLM's clients set only the one
    extra = body.get("chat_template_kwargs")
    if extra is not None:
        if not isinstance(extra, dict) or not all(isinstance(k, str) and k.isidentifier() for k in extra):
            raise InvalidRequestError("chat_template_kwargs", "must be an object of template variables")
        reserved = {"conversation", "messages", "tokenize", "add_generation_prompt", "continue_final_message",
                    "chat_template", "tools", "documents", "return_dict", "return_tensors", "tokenizer_kwargs"}
        clash = sorted(reserved & set(extra))
        if clash:
            raise InvalidRequestError("chat_template_kwargs", f"{clash[0]!r} is set by the server")
        options["template_kwargs"] = extra
    effort = body.get("reasoning_effort")
    if effort is not None:  # OpenAI's field, handed to templates that read it (gpt-oss's, as vLLM does)
        if effort not in REASONING_EFFORTS:
            raise InvalidRequestError("reasoning_effort", f"must be one of {', '.join(REASONING_EFFORTS)}")
        options["template_kwargs"] = {"reasoning_effort": effort, **options.get("template_kwargs", {})}
    tools = template_tools(body)
    if tools is not None:
        options["tools"] = tools
    documents = body.get("documents")
    if documents is not None:  # vLLM's: for a template that renders retrieved documents (RAG)
        if not isinstance(documents, list) or not all(
                isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())
                for d in documents):
            raise InvalidRequestError("documents", "must be a list of objects of strings (e.g. title, text)")
        options["documents"] = documents
    return options
