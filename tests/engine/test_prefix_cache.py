"""The engine's local prefix cache: hashes, hits, recycling under pressure, exact outputs."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine.block_allocator import BlockAllocator
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.prefix_cache import PrefixCache, block_hashes, hash_root
from engine.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def test_block_hashes_chain_and_extend() -> None:
    a = block_hashes(list(range(40)), 16)
    assert len(a) == 2  # only full blocks
    assert block_hashes(list(range(40)), 16, start=a[:1]) == a  # extending gives the same chain
    b = block_hashes([99] + list(range(1, 40)), 16)
    assert b[0] != a[0] and b[1] != a[1]  # a change in block 0 renames every later block
    assert block_hashes(list(range(40)), 16, limit=1) == a[:1]


def test_a_salt_starts_a_chain_of_its_own() -> None:
    tokens = list(range(48))
    plain, salted = block_hashes(tokens, 16), block_hashes(tokens, 16, cache_salt="tenant-a")
    assert hash_root("") == hash_root() and hash_root("tenant-a") != hash_root()
    assert not set(plain) & set(salted)  # no block of one chain names a block of the other
    assert not set(salted) & set(block_hashes(tokens, 16, cache_salt="tenant-b"))
    assert block_hashes(tokens, 16, cache_salt="tenant-a") == salted
    assert block_hashes(tokens, 16, start=salted[:1]) == salted  # extending follows the start's chain


def test_match_revives_and_recycling_forgets() -> None:
    alloc = BlockAllocator(4)
    cache = PrefixCache(alloc, block_size=2)
    hashes = block_hashes([1, 2, 3, 4, 5, 6], 2)
    blocks = alloc.allocate(3)
    cache.insert(hashes, blocks)
    alloc.free(reversed(blocks))  # the owner is done: the blocks are free but still cached
    assert alloc.num_free == 4 and len(cache) == 3

    hit = cache.match(hashes[:2], num_query_tokens=5)
    assert hit == blocks[:2] and alloc.num_free == 2
    assert [alloc.refcount(b) for b in hit] == [1, 1]
    assert cache.stats.query_tokens == 5 and cache.stats.hit_tokens == 4

    # allocation takes the oldest free block first: the never-used one, then the freed tail (blocks[2])
    alloc.allocate(2)
    assert len(cache) == 2 and cache.match(hashes, 6) == blocks[:2]  # the chain now stops at block 2
    cache.check_integrity()
    alloc.check_integrity()


def test_insert_keeps_first_owner_of_a_hash() -> None:
    alloc = BlockAllocator(4)
    cache = PrefixCache(alloc, block_size=2)
    h = block_hashes([7, 8], 2)
    first, second = alloc.allocate(2)
    cache.insert(h, [first])
    cache.insert(h, [second])  # the same tokens computed twice: the duplicate is not registered
    assert cache.match(h, 2) == [first]
    alloc.free([first, first, second])
    cache.check_integrity()


@pytest.fixture(scope="module")
def cached_engine(model_dir: Path) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=256, lookahead=False))


def test_second_request_reuses_prefix_and_output_is_identical(cached_engine: LLMEngine, model_dir: Path) -> None:
    eng = cached_engine
    rng = random.Random(1)
    prompt = [rng.randrange(100, 40000) for _ in range(100)]
    cold = eng.generate([prompt], GREEDY)[0]
    hits_before = eng.prefix_cache.stats.hit_tokens
    seq = eng.add_request("warm", prompt, GREEDY)
    while eng.has_work:
        eng.step()
    # 100 tokens: 6 full blocks usable (the last token is always computed)
    assert seq.num_cached_prompt == 96
    assert eng.prefix_cache.stats.hit_tokens - hits_before == 96
    assert seq.output_ids == cold.output_ids
    # a prompt sharing only the first 40 tokens reuses its 2 full blocks
    branch = prompt[:40] + [rng.randrange(100, 40000) for _ in range(30)]
    seq = eng.add_request("branch", branch, GREEDY)
    while eng.has_work:
        eng.step()
    assert seq.num_cached_prompt == 32
    off = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=64, lookahead=False, prefix_caching=False))
    assert off.generate([branch], GREEDY)[0].output_ids == seq.output_ids
    assert eng.allocator.num_used == 0
    eng.allocator.check_integrity()
    eng.prefix_cache.check_integrity()


def test_a_salted_request_reuses_only_its_salts_prefix(cached_engine: LLMEngine) -> None:
    """vLLM's cache_salt: the same prompt under another salt (or none) finds nothing cached; under
    its own salt, the whole prefix; the output is the same text every time."""
    eng = cached_engine
    rng = random.Random(4)
    prompt = [rng.randrange(100, 40000) for _ in range(100)]

    def run(name: str, salt: str) -> tuple[int, list[int]]:
        seq = eng.add_request(name, prompt, GREEDY, cache_salt=salt)
        while eng.has_work:
            eng.step()
        return seq.num_cached_prompt, seq.output_ids

    cached, first = run("salt-a", "a")
    assert cached == 0
    assert run("salt-b", "b") == (0, first)
    assert run("no-salt", "") == (0, first)
    assert run("salt-a-again", "a") == (96, first)
    assert run("no-salt-again", "") == (96, first)
    assert eng.allocator.num_used == 0
    eng.prefix_cache.check_integrity()


def test_cache_under_block_pressure_stays_exact(model_dir: Path) -> None:
    """A pool too small to keep everything: cached blocks are recycled, shared ones never."""
    rng = random.Random(2)
    shared = [rng.randrange(100, 40000) for _ in range(48)]
    prompts = [shared + [rng.randrange(100, 40000) for _ in range(rng.randrange(5, 40))] for _ in range(10)]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    tight = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=14, lookahead=False))
    off = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=64, lookahead=False, prefix_caching=False))
    got = [o.output_ids for o in tight.generate(prompts[:5], params)]
    got += [o.output_ids for o in tight.generate(prompts[5:], params)]
    want = [o.output_ids for o in off.generate(prompts, params)]
    assert got == want
    assert tight.prefix_cache.stats.hit_tokens > 0
    assert tight.allocator.num_used == 0
    tight.allocator.check_integrity()
    tight.prefix_cache.check_integrity()


def test_requests_arriving_together_compute_a_shared_prefix_once(cached_engine: LLMEngine, model_dir: Path) -> None:
    """Six requests with one 64-token system prompt submitted at once: the first computes it, the
    others wait one step and reuse its blocks; a request that shares too little is not held back."""
    eng = cached_engine
    rng = random.Random(3)
    system = [rng.randrange(100, 40000) for _ in range(64)]
    prompts = [system + [rng.randrange(100, 40000) for _ in range(rng.randrange(3, 12))] for _ in range(6)]
    lonely = system[:16] + [rng.randrange(100, 40000) for _ in range(60)]  # 16 shared of 76: no wait
    seqs = [eng.add_request(f"sys{i}", p, GREEDY) for i, p in enumerate(prompts + [lonely])]
    hits_before = eng.prefix_cache.stats.hit_tokens
    eng.step()
    assert [len(s.output_ids) for s in seqs] == [1, 0, 0, 0, 0, 0, 1]  # sys0 and the lonely one ran
    eng.step()
    assert all(len(s.output_ids) >= 1 for s in seqs)  # the rest joined one step later
    while eng.has_work:
        eng.step()
    assert [s.num_cached_prompt for s in seqs[1:6]] == [64] * 5  # reused, not recomputed
    assert eng.prefix_cache.stats.hit_tokens - hits_before == 5 * 64
    off = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=64, lookahead=False, prefix_caching=False))
    assert [o.output_ids for o in off.generate(prompts + [lonely], GREEDY)] == [s.output_ids for s in seqs]
    assert eng.allocator.num_used == 0
    eng.allocator.check_integrity()
    eng.prefix_cache.check_integrity()


def test_a_finished_sequence_leaves_every_computed_block_cached(model_dir: Path) -> None:
    """With lookahead, a step computes the KV of several accepted drafts at once; their blocks are
    registered in that step, not one step later, so a sequence that finishes there leaves them
    cached too (a chat's next turn, or the decode worker's write to the kvstore, finds them)."""
    eng = LLMEngine(EngineConfig(model=str(model_dir), num_kv_blocks=128))
    assert eng.speculator is not None
    text = "one two three four five six seven eight nine ten " * 6  # copied: drafts are accepted
    prompt = eng.tokenizer.encode(text)
    for max_tokens in range(24, 40):
        out = eng.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))[0]
        tokens = list(out.prompt_ids) + list(out.output_ids)
        computed = len(tokens) - 1  # the last token's KV is never computed
        hashes = block_hashes(tokens[:computed], 16)
        assert eng.scheduler.prefix_cache.num_cached(hashes) == computed // 16, max_tokens
    assert eng.speculator.stats.num_accepted_tokens > 100  # the steps did take several tokens
