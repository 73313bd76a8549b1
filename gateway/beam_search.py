"""vLLM's beam search (``use_beam_search``), as vLLM runs it: above the engine, one token a step.

Each step sends every live beam (the prompt and the beam's tokens) through the pipeline for one
greedy token with its ``2 x width`` likeliest alternatives (a prefill: the workers' prefix caches
hold the beam's earlier tokens); each alternative extends its beam, an EOS one ends it. The
``width`` best by score go on. After ``max_tokens`` steps the ended and the live beams together
are ranked by score, and the ``n`` best are the answer. A beam's score is its summed logprob over
its length to the power ``length_penalty``, the length counting the prompt and not a closing EOS,
as vLLM's ``get_beam_search_score``. Deterministic: temperature and the other sampling fields do
not apply; stop strings neither (as in vLLM)."""
from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine.errors import InvalidRequestError
from engine.request import LoraRef, TokenOut, Usage
from engine.sampling_params import MAX_LOGPROBS, SamplingParams
from gateway.core import GatewayCore

MAX_WIDTH = MAX_LOGPROBS // 2  # each step asks for 2 x width alternatives


class Placement(NamedTuple):
    """What every request of a search shares: the pipeline id its own begin with, when it arrived,
    its priority and cache salt (a tenant's beams share prefixes only with its own requests), and
    its LoRA adapter."""

    request_id: str
    arrived: float
    priority: int = 0
    cache_salt: str = ""
    lora: LoraRef | None = None


@dataclass(slots=True)
class Beam:
    tokens: list[TokenOut] = field(default_factory=list)  # the output so far, each token with its logprob
    cum_logprob: float = 0.0
    finish: str | None = None  # "stop": ended by an EOS; None: still live (its answer ends "length")


def score(beam: Beam, prompt_len: int, length_penalty: float) -> float:
    """vLLM's: summed logprob / length ** length_penalty (the prompt counted, a closing EOS not)."""
    length = prompt_len + len(beam.tokens) - (beam.finish == "stop")
    return beam.cum_logprob / (length ** length_penalty)


def beam_width(body: dict[str, Any], n: int, params: SamplingParams) -> tuple[int, float] | None:
    """(width, length_penalty) of a request with ``use_beam_search`` (the width is ``n``, as in
    vLLM), or None; what beam search cannot give is a 400."""
    if not body.get("use_beam_search"):
        if body.get("length_penalty") not in (None, 1, 1.0):
            raise InvalidRequestError("length_penalty", "applies to beam search only (use_beam_search)")
        return None
    if body.get("use_beam_search") is not True:
        raise InvalidRequestError("use_beam_search", "must be a boolean")
    penalty = body.get("length_penalty", 1.0)
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not -10.0 <= penalty <= 10.0:
        raise InvalidRequestError("length_penalty", "must be a number in [-10, 10]")
    if not 1 <= n <= MAX_WIDTH:
        raise InvalidRequestError("n", f"is the beam width with use_beam_search: from 1 to {MAX_WIDTH}")
    for key in ("stream", "logprobs", "top_logprobs", "prompt_logprobs", "echo", "prediction"):
        if body.get(key) not in (None, False):
            raise InvalidRequestError(key, "is not available with use_beam_search")
    if params.structured is not None:
        raise InvalidRequestError("use_beam_search", "cannot be combined with structured output or tool calls")
    return n, float(penalty)


async def beam_search(core: GatewayCore, prompt: list[int], params: SamplingParams, width: int, length_penalty: float,
                      where: Placement) -> tuple[list[Beam], Usage]:
    """The ``width`` best beams of ``prompt``, best first, and the answer's usage: its beams'
    tokens, and the prompt tokens the first step's prefill found in the prefix cache."""
    eos = set(core.model_config.eos_token_ids)
    steps = min(params.max_tokens, core.max_model_len - len(prompt))
    step_params = dataclasses.replace(params, temperature=0.0, max_tokens=1, logprobs=2 * width, min_tokens=0,
                                      stop=(), seed=None, lookahead=False, prediction=())
    live, ended = [Beam()], []
    cached = 0
    for step in range(steps):
        outs = await asyncio.gather(*(_one_token(core, [*prompt, *(t.token_id for t in b.tokens)], step_params,
                                                 where._replace(request_id=f"{where.request_id}-s{step}b{i}"))
                                      for i, b in enumerate(live)))
        grown: list[Beam] = []
        for beam, (token, hit) in zip(live, outs):
            cached = hit if step == 0 else cached
            for tid, lp in zip(token.top_ids, token.top_logprobs):
                new = Beam([*beam.tokens, TokenOut(tid, lp)], beam.cum_logprob + lp)
                if tid in eos and not params.ignore_eos:
                    new.finish = "stop"
                    ended.append(new)
                else:
                    grown.append(new)
        grown.sort(key=lambda b: score(b, len(prompt), length_penalty), reverse=True)  # stable: ties keep their order
        live = grown[:width]
        if not live:
            break
    best = sorted([*ended, *live], key=lambda b: score(b, len(prompt), length_penalty), reverse=True)[:width]
    return best, Usage(len(prompt), sum(len(b.tokens) for b in best), cached)


async def _one_token(core: GatewayCore, ids: list[int], params: SamplingParams,
                     where: Placement) -> tuple[TokenOut, int]:
    """One greedy token of ``ids`` with its alternatives, and the prompt tokens the cache served."""
    token: TokenOut | None = None
    cached = 0
    work = core.work(ids, params, where.request_id, where.priority, where.cache_salt, where.lora)
    async for chunk in core.generate(work, where.arrived):
        token = chunk.tokens[0] if chunk.tokens else token
        cached = chunk.usage.cached_tokens if chunk.usage is not None else cached
    assert token is not None, "a request of one token ended without it"
    return token, cached


def as_choices(core: GatewayCore, beams: list[Beam],
               skip_special_tokens: bool) -> list[tuple[str, list[TokenOut], str, None]]:
    """The beams as each choice's whole output: (text, tokens, finish reason, no prompt logprobs)."""
    return [(core.tokenizer.decode([t.token_id for t in b.tokens], skip_special_tokens=skip_special_tokens),
             b.tokens, b.finish or "length", None) for b in beams]
