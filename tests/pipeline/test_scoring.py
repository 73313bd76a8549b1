"""vLLM's score and rerank APIs through the stack: each score is the cosine similarity of
transformers' pooled vectors of the two texts (the last token's final hidden state), in vLLM's
pairings and Jina's / Cohere's rerank shape, best first."""
from __future__ import annotations

from typing import Any

import httpx
import pytest
import torch

from launcher.stack import Stack
from launcher.stack_probe import wait_idle

MODEL = "SmolLM2-135M-Instruct"
QUERY = "Where do rivers flow?"
DOCS = ["Rivers flow downhill into lakes and the sea.", "A recipe for bread: flour, water, salt.",
        "The stock market closed higher today."]


def _cos(hf_model: Any, tokenizer: Any, a: str, b: str) -> float:
    def last(text: str) -> torch.Tensor:
        with torch.no_grad():
            return hf_model.model(torch.tensor([tokenizer(text)["input_ids"]])).last_hidden_state[0, -1].double()
    return float(torch.nn.functional.cosine_similarity(last(a), last(b), dim=0))


def test_scores_pair_texts_as_vllm_does(stack: Stack, hf_model: Any, tokenizer: Any) -> None:
    one_to_many = httpx.post(stack.http_url + "/v1/score", timeout=120,
                             json={"model": MODEL, "text_1": QUERY, "text_2": DOCS}).json()
    assert [d["index"] for d in one_to_many["data"]] == [0, 1, 2] and one_to_many["model"] == MODEL
    for d, doc in zip(one_to_many["data"], DOCS):
        assert d["object"] == "score" and abs(d["score"] - _cos(hf_model, tokenizer, QUERY, doc)) < 1e-4
    pairs = httpx.post(stack.http_url + "/score", timeout=120, json={"text_1": DOCS[:2], "text_2": DOCS[1:]}).json()
    assert [round(d["score"], 4) for d in pairs["data"]] == \
        [round(_cos(hf_model, tokenizer, a, b), 4) for a, b in zip(DOCS[:2], DOCS[1:])]
    assert pairs["usage"]["prompt_tokens"] == sum(len(tokenizer(t)["input_ids"]) for t in DOCS)  # each text once
    wait_idle(stack)


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_puts_the_closest_documents_first(stack: Stack, hf_model: Any, tokenizer: Any, path: str) -> None:
    out = httpx.post(stack.http_url + path, timeout=120,
                     json={"model": MODEL, "query": QUERY, "documents": DOCS, "top_n": 2}).json()
    want = sorted(((_cos(hf_model, tokenizer, QUERY, d), i) for i, d in enumerate(DOCS)), reverse=True)[:2]
    assert [r["index"] for r in out["results"]] == [i for _, i in want]
    for r, (score, i) in zip(out["results"], want):
        assert r["document"] == {"text": DOCS[i]} and abs(r["relevance_score"] - score) < 1e-4


@pytest.mark.parametrize("path, body, field", [
    ("/v1/score", {"text_1": QUERY}, "text_2"),
    ("/v1/score", {"text_1": DOCS[:2], "text_2": DOCS}, "text_1"),
    ("/v1/score", {"text_1": "", "text_2": "x"}, "text_1"),
    ("/v1/rerank", {"query": QUERY, "documents": []}, "documents"),
    ("/v1/rerank", {"query": QUERY, "documents": DOCS, "top_n": -1}, "top_n"),
    ("/v1/rerank", {"documents": DOCS}, "query"),
])
def test_bad_requests_name_their_field(stack: Stack, path: str, body: dict, field: str) -> None:
    r = httpx.post(stack.http_url + path, json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
