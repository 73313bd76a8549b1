"""Protobuf conversion (protocol.pipeline): every sampling field survives the wire."""
from __future__ import annotations

import dataclasses

from engine.request import WorkRequest
from engine.sampling_params import SamplingParams
from engine.structured import StructuredSpec
from protocol.pipeline import sampling_from_pb, sampling_to_pb, work_from_pb, work_to_pb


def test_every_sampling_field_round_trips() -> None:
    p = SamplingParams(max_tokens=50, temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1,
                       presence_penalty=0.5, frequency_penalty=-0.5, seed=-3, stop=("a", "bc"),
                       stop_token_ids=(7, 9), ignore_eos=True, logprobs=3, lookahead=False, min_tokens=0,
                       logit_bias=((5, -100.0), (12, 2.5)), include_stop_str_in_output=True,
                       skip_special_tokens=False, structured=StructuredSpec("regex", "[a-z]+"), prompt_logprobs=2,
                       bad_words=("no", " never"), prediction=(4, 5, 6))
    # each field but min_tokens and allowed_token_ids (q has them) differs from its default: a field
    # the conversion dropped would show
    defaults = SamplingParams()
    assert [f.name for f in dataclasses.fields(p) if getattr(p, f.name) == getattr(defaults, f.name)] == \
        ["min_tokens", "allowed_token_ids"]
    assert sampling_from_pb(sampling_to_pb(p)) == p
    # min_tokens and allowed tokens are refused with a grammar
    q = dataclasses.replace(p, structured=None, min_tokens=4, allowed_token_ids=(3, 1, 2))
    assert sampling_from_pb(sampling_to_pb(q)) == q
    assert sampling_from_pb(sampling_to_pb(defaults)) == defaults


def test_a_work_request_round_trips_with_its_priority() -> None:
    w = WorkRequest("req-1", (5, 6, 7), SamplingParams(temperature=0.0, bad_words=("x",)), seed=-9, priority=-3)
    assert work_from_pb(work_to_pb(w)) == w
    assert work_from_pb(work_to_pb(dataclasses.replace(w, priority=7))).priority == 7
