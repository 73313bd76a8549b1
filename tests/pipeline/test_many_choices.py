"""A request with more choices than its prefill workers take at once (``n``, a list of prompts) is
served, not refused with a 429 that its own choices caused. A real stack whose one prefill worker
takes 2 requests at a time (``--max-waiting 2``; 256 by default, as many choices as a request may
have, but other requests may hold places too)."""
from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from launcher.stack import Stack, StackConfig
from launcher.stack_probe import gateway_retry_counts, wait_idle, worker_stat


@pytest.fixture(scope="module")
def narrow(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(model=str(model_dir), num_prefill=1, num_decode=1, worker_kv_gb=0.25,
                         prefill_args=(("--max-waiting", "2"),), log_dir=str(tmp_path_factory.mktemp("narrow-stack")),
                         threads_per_worker=1)
    with Stack(config) as s:
        yield s


def _complete(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(stack.http_url + "/v1/completions", json={"return_token_ids": True, **body}, timeout=300)


def test_n_beyond_the_prefill_workers_room_is_served(narrow: Stack) -> None:
    """n = 6 samples: the first one's, then five side by side into a worker that takes 2. Sample j
    is what the same request with n = 1 and seed + j gives (vLLM's n), so none came out otherwise
    for having waited."""
    body = {"prompt": "Once upon a time, in a quiet village,", "max_tokens": 12, "temperature": 1.0, "seed": 11}
    before = sum(gateway_retry_counts(narrow).values())
    r = _complete(narrow, {**body, "n": 6})
    assert r.status_code == 200, r.text
    choices = sorted(r.json()["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == list(range(6))
    retries = sum(gateway_retry_counts(narrow).values()) - before
    assert retries > 0, "no choice was refused: the worker's limit was never reached, the test proves nothing"
    for j in (0, 3, 5):
        alone = _complete(narrow, {**body, "seed": 11 + j})
        assert alone.status_code == 200, alone.text
        assert choices[j]["token_ids"] == alone.json()["choices"][0]["token_ids"], f"sample {j}"
    assert set(wait_idle(narrow).values()) == {(0, 0, 0)}


def test_a_list_of_prompts_beyond_the_prefill_workers_room_is_served(narrow: Stack) -> None:
    """Five prompts in one request, all started at once: each choice is the prompt's own greedy
    output, as the same prompt sent alone gives."""
    prompts = [f"Item {i}: the list of the planets begins with" for i in range(5)]
    r = _complete(narrow, {"prompt": prompts, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    got = {c["index"]: c["token_ids"] for c in r.json()["choices"]}
    assert sorted(got) == list(range(5))
    for i in (0, 4):
        alone = _complete(narrow, {"prompt": prompts[i], "max_tokens": 8, "temperature": 0})
        assert got[i] == alone.json()["choices"][0]["token_ids"], f"prompt {i}"
    assert set(wait_idle(narrow).values()) == {(0, 0, 0)}


def test_a_worker_full_of_others_requests_still_answers_429(narrow: Stack) -> None:
    """The wait is for room the request's own choices make: n = 3 against a worker that two other
    requests fill is refused at once (no choice of its own is in a prefill to wait for). The
    fillers are long prompts sent first; the probe goes once the worker has both in its batch."""
    url = narrow.http_url + "/v1/completions"
    statuses: list[int] = []
    with httpx.Client(timeout=300) as client, concurrent.futures.ThreadPoolExecutor(2) as ex:
        for attempt in range(5):  # (a probe that comes after a filler is done is served: try again)
            # the last try's requests gone from the worker first (a filler of this try sent while the
            # worker still held the last try's was refused 429 at once, once in a full run)
            assert set(wait_idle(narrow).values()) == {(0, 0, 0)}
            fillers = [ex.submit(client.post, url, json={"prompt": f"{attempt} {i} " + "word " * 2000, "max_tokens": 1})
                       for i in range(2)]
            deadline = time.monotonic() + 60
            while (s := worker_stat(narrow, "prefill-0")).num_running + s.num_waiting < 2:
                assert time.monotonic() < deadline and not any(f.done() for f in fillers), \
                    [f.result().text for f in fillers if f.done()]
                time.sleep(0.01)
            r = client.post(url, json={"prompt": "hi", "max_tokens": 2, "n": 3})
            statuses.append(r.status_code)
            assert [f.result().status_code for f in fillers] == [200, 200]
            if r.status_code == 429:
                break
    assert statuses[-1] == 429, statuses
    assert "every prefill worker is at capacity" in r.json()["error"]["message"]
    assert set(wait_idle(narrow).values()) == {(0, 0, 0)}
