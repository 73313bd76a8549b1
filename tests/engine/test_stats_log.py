"""A worker's periodic stats line (runtime.stats_log) read from a real engine: the interval's
tokens and rates, the requests, the KV cache, lookahead's acceptance; nothing for an idle one."""
from __future__ import annotations

import re
from typing import Any

from engine.sampling_params import SamplingParams
from runtime.stats_log import snapshot, stats_line


def test_the_line_counts_what_the_engine_computed(engine: Any) -> None:
    idle = snapshot(engine)
    assert stats_line(engine, idle, snapshot(engine)) is None  # nothing happened: no line
    # a prompt of its own (no prefix another test cached) whose answer copies it: lookahead drafts
    text = "stats-log check: " + "one two three four five six seven eight nine ten " * 6
    prompt = engine.tokenizer(text)["input_ids"]
    before = snapshot(engine)
    out = engine.generate([prompt], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))[0]
    now = snapshot(engine)
    assert now.prompt_tokens - before.prompt_tokens == len(prompt)
    assert now.generation_tokens - before.generation_tokens == len(out.output_ids) == 40
    line = stats_line(engine, before, now)
    assert line is not None and "running: 0 reqs, waiting: 0 reqs" in line
    seconds = now.at - before.at
    rate = float(re.search(r"generation throughput: ([\d.]+) tokens/s", line).group(1))  # type: ignore[union-attr]
    assert abs(rate - 40 / seconds) < 0.1
    drafts = now.drafts - before.drafts
    assert drafts > 0 and "lookahead: mean acceptance length" in line  # the copy drafts
    accepted = now.accepted_tokens - before.accepted_tokens
    assert f"accepted {accepted} of {now.draft_tokens - before.draft_tokens} draft tokens" in line
    assert f"mean acceptance length {1 + accepted / drafts:.2f}" in line
