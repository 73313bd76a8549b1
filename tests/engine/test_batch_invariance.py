"""16-bit serving is row-invariant, which is what makes bf16 lookahead exact.

A lookahead step computes a token inside a tree of drafts, beside other sequences' tokens; plain
decoding computes the same token alone. In fp32 the two round differently by ~1e-7, which no
greedy test has noticed; in bf16 one differently rounded element changes the next layer's
inputs, and greedy output parted ways after 27-52 tokens on 7 of 14 prompts. So every op on the
16-bit path must give a row the same bits whatever else is in its step: bf16 products by Grove's
packed kernel where the CPU has AVX512-BF16 (kernels/cpu_linear.cpp), else ``W @ X`` in pieces of
at most ``WX_MAX_COLUMNS`` columns (engine.layers), and attention in fp64
(engine.attention.torch_backend) or in the C++ kernel (kernels/cpu_attention.cpp, the CPU
default); the kernels are row-invariant by construction.

Checked here bit for bit: the products over the bundled model's shapes, attention for a tree token
vs the same token decoded alone (in a batch with padding, and alone), and the real model in bf16:
lookahead on equals off, batched equals alone, a prefix-cache hit equals a cold prefill, and all
equal transformers in bf16 up to bf16 near ties.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

import engine.attention.torch_backend as torch_backend
from engine.attention.base import KVLayerCache
from engine.attention.cpu_backend import CpuAttentionBackend
from engine.attention.torch_backend import TorchAttentionBackend
from engine.batch import SeqInput, plan_batch
from engine.engine_config import EngineConfig
from engine.layers import WX_MAX_COLUMNS, linear, linear_residual, pack_weight, products_row_invariant
from engine.llm_engine import LLMEngine
from engine.reference import compare_greedy, hf_greedy
from engine.sampling_params import SamplingParams
from engine.lookahead.budget import FreeWideSteps
from kernels import cpu_linear
from tests.prompts import code_edit_ids, engine_prompts

# (out, in) of SmolLM2-135M's products: qkv, o, gate_up, down, lm_head
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576)]


@pytest.mark.parametrize("packed", [False, True], ids=["torch", "packed"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_products_are_row_invariant(shape: tuple[int, int], dtype: torch.dtype, packed: bool) -> None:
    """Every row of ``linear`` / ``linear_residual`` over T rows equals that row computed alone,
    for every T up to the piece width and for wider inputs that are cut into pieces (the widths
    where the unpieced product on 2 threads changed algorithm: 256-340).

    bf16, the CPU serving dtype, must hold on the path a bf16 engine serves on. fp16 depends on
    the CPU's math kernels (it held on an Intel CPU with AMX and avx512_fp16, and differs at T=2 on
    an AMD EPYC): where it does not, the probe the engine runs at start (``products_row_invariant``)
    must say so, which turns lookahead off for that engine (next test).

    packed: the weight as the engine loads it (``pack_weight``: Grove's bf16 kernel where the CPU
    has AVX512-BF16 or AVX2, else unchanged), the path a bf16 engine serves on. torch's own bf16
    products are that path only on a CPU without the kernel; where the kernel runs they are not
    served (and on an AVX2-only AMD EPYC they are neither row-invariant nor fast: minutes here)."""
    if dtype == torch.bfloat16 and not packed and cpu_linear.available():
        pytest.skip("bf16 is served by Grove's CPU kernel on this machine, not by torch's products")
    gen = torch.Generator().manual_seed(sum(shape))
    out_f, in_f = shape
    w = (torch.randn(out_f, in_f, generator=gen) * 0.05).to(dtype)
    if packed:
        w = pack_weight(w)
    x = torch.randn(340, in_f, generator=gen).to(dtype)
    res = torch.randn(340, out_f, generator=gen).to(dtype)
    # the lm_head: every 5th width (all residues mod 16 within the first 80) and, of each width,
    # its first, middle and last two rows against those rows alone, to keep make test short
    big = out_f > 10_000
    widths = list(range(1, WX_MAX_COLUMNS + 1, 5 if big else 1)) + [WX_MAX_COLUMNS + 1, 256, 266, 300, 340]

    def rows_of(t: int) -> list[int]:
        return sorted({0, t // 2, t - 2, t - 1} - {-1}) if big else list(range(t))

    alone: dict[tuple[int, bool], torch.Tensor] = {}

    def same(t: int, residual: bool) -> bool:
        got = linear_residual(x[:t], w, res[:t].clone()) if residual else linear(x[:t], w)
        for i in rows_of(t):
            if (i, residual) not in alone:
                alone[i, residual] = (linear_residual(x[i:i + 1], w, res[i:i + 1].clone()) if residual
                                      else linear(x[i:i + 1], w))[0]
            if not torch.equal(got[i], alone[i, residual]):
                return False
        return True

    # the first width whose rows differ, if any (where fp16 differs it does at T=2: the widths after
    # it would only cost minutes of torch's slow fp16 products on an AMD EPYC and not change the answer)
    checks = [(f"linear at T={t}", t, False) for t in widths]
    checks += [(f"residual at T={t}", t, True) for t in (1, 2, 7, 64, WX_MAX_COLUMNS, 300)]
    differ = next((name for name, t, residual in checks if not same(t, residual)), None)
    if dtype == torch.bfloat16:
        assert differ is None
    assert products_row_invariant([w]) == (differ is None), differ


def test_lookahead_is_off_where_products_are_not_row_invariant(model_dir: Path) -> None:
    """A 16-bit engine drafts only where its own weights' products pass the probe on this CPU:
    bf16 always (previous test); fp16 as this machine's kernels allow."""
    for dtype in ("bfloat16", "float16"):
        # steps of up to 64 tokens: the start's step-cost calibration times no wider ones
        eng = LLMEngine(EngineConfig(model=str(model_dir), dtype=dtype, num_kv_blocks=64, lookahead_max_step_tokens=64))
        w = eng.model.weights
        layer = w.layers[0]
        exact = products_row_invariant([layer.qkv, layer.o, layer.gate_up, layer.down, w.lm_head])
        assert (eng.speculator is not None) == exact
        assert exact or dtype == "float16"


# --- attention: a tree token vs the same token decoded alone -------------------------------------

BS, KVH, H, D = 16, 3, 9, 64
TREE = [-1, 0, 1, -1, 3, 4, 1]  # two branches sharing nothing, one fork below node 1
# 20 nodes (3 chunks of the C++ kernel, where a node decoded alone is one):
# a 16-deep chain with forks at depths 2 and 9, and a second root
BIG_TREE = [-1, *range(0, 15), 1, 8, 17, -1]


def _path(parents: list[int], node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def _tree_vs_decode(ctx: int, other_len: int, dtype: torch.dtype, backend: TorchAttentionBackend | None = None,
                    window: int | None = None, tree: list[int] = TREE) -> list[tuple[int, int]]:
    """Attend a verify step (one tree after ``ctx`` cached tokens, beside a decode of a sequence of
    ``other_len``), then decode every tree node alone with its path compacted behind the context,
    in a batch of one and beside the other sequence. Returns (node, variant) pairs that differ."""
    gen = torch.Generator().manual_seed(ctx * 1000 + other_len)
    n = len(tree)
    blocks_per = -(-(max(ctx + n, other_len) + 1) // BS)
    cache = KVLayerCache(torch.zeros(4 * blocks_per + 2, BS, KVH, D, dtype=dtype),
                         torch.zeros(4 * blocks_per + 2, BS, KVH, D, dtype=dtype))
    tree_blocks = list(range(1, 1 + blocks_per))
    other_blocks = list(range(1 + blocks_per, 1 + 2 * blocks_per))
    ctx_k, ctx_v = (torch.randn(ctx, KVH, D, generator=gen).to(dtype) for _ in range(2))
    node_k, node_v, node_q = (torch.randn(n, t, D, generator=gen).to(dtype) for t in (KVH, KVH, H))
    other_k, other_v = (torch.randn(other_len, KVH, D, generator=gen).to(dtype) for _ in range(2))
    other_q = torch.randn(1, H, D, generator=gen).to(dtype)
    backend = backend or TorchAttentionBackend()

    def write(table: list[int], start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        for i in range(k.shape[0]):
            b, o = table[(start + i) // BS], (start + i) % BS
            cache.k[b, o], cache.v[b, o] = k[i], v[i]

    def run(seqs: list[SeqInput], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        plan = backend.plan(plan_batch(seqs, BS, sliding_window=window).attn)
        backend.write_kv(cache, k, v, plan)
        return backend.attend(q, cache, plan, D**-0.5)

    write(tree_blocks, 0, ctx_k, ctx_v)
    write(other_blocks, 0, other_k[:-1], other_v[:-1])
    other = SeqInput([0], other_len - 1, other_blocks)
    verify = run([SeqInput([0] * n, ctx, tree_blocks, parents=tree), other],
                 torch.cat([node_q, other_q]), torch.cat([node_k, other_k[-1:]]), torch.cat([node_v, other_v[-1:]]))
    bad = []
    chain_blocks = list(range(1 + 2 * blocks_per, 1 + 3 * blocks_per))
    write(chain_blocks, 0, ctx_k, ctx_v)
    for node in range(n):
        path = _path(tree, node)
        write(chain_blocks, ctx, node_k[path[:-1]], node_v[path[:-1]])  # accepted ancestors, compacted
        last = (node_q[node:node + 1], node_k[node:node + 1], node_v[node:node + 1])
        seq = SeqInput([0], ctx + len(path) - 1, chain_blocks)
        if not torch.equal(run([seq], *last)[0], verify[node]):
            bad.append((node, 0))
        both = run([seq, other], *(torch.cat([a, b]) for a, b in zip(last, (other_q, other_k[-1:], other_v[-1:]))))
        if not torch.equal(both[0], verify[node]):
            bad.append((node, 1))
    return bad


CASES = [(37, 5), (40, 90), (100, 33), (255, 256), (300, 17)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ctx,other_len", CASES)
def test_tree_token_attends_as_when_decoded_alone(ctx: int, other_len: int, dtype: torch.dtype) -> None:
    assert _tree_vs_decode(ctx, other_len, dtype) == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("ctx,other_len", CASES)
def test_cpu_kernel_tree_token_attends_as_when_decoded_alone(ctx: int, other_len: int, dtype: torch.dtype) -> None:
    """The C++ kernel (the CPU serving path) is row-invariant in every dtype, fp32 included."""
    assert CpuAttentionBackend.available(), "the CPU attention kernel did not build (g++ missing?)"
    assert _tree_vs_decode(ctx, other_len, dtype, CpuAttentionBackend()) == []


@pytest.mark.parametrize("ctx,other_len,window", [(100, 33, 64), (255, 256, 40), (300, 17, 5), (40, 90, 2)])
def test_cpu_kernel_tree_token_attends_as_when_decoded_alone_with_a_window(ctx: int, other_len: int,
                                                                          window: int) -> None:
    """The same with a sliding window cutting the context (window 2: the tree's own ancestors too)."""
    assert _tree_vs_decode(ctx, other_len, torch.bfloat16, CpuAttentionBackend(), window) == []


@pytest.mark.parametrize("ctx,other_len,window", [(37, 5, None), (300, 17, None), (700, 40, None), (300, 17, 100)])
def test_cpu_kernel_big_tree_token_attends_as_when_decoded_alone(ctx: int, other_len: int,
                                                                 window: int | None) -> None:
    """A tree over several of the kernel's chunks of query tokens against each node decoded alone."""
    assert _tree_vs_decode(ctx, other_len, torch.bfloat16, CpuAttentionBackend(), window, BIG_TREE) == []


DEEP_TREE = [-1, *range(0, 32), 5, 20, -1]  # a 32-deep chain (the engine's deepest draft), two forks, a lone root


@pytest.mark.parametrize("ctx,other_len", [(64, 3), (95, 200), (96, 33), (127, 9), (161, 64)])
def test_cpu_kernel_deepest_tree_token_attends_as_when_decoded_alone(ctx: int, other_len: int) -> None:
    """On AMX the kernel tiles a row's keys up to amx_end(position), the rest one at a time: with
    trees as deep as the engine drafts and contexts around the tiles' 32-key edges, every node's
    tiled keys are the context's, the same as when decoded alone."""
    assert _tree_vs_decode(ctx, other_len, torch.bfloat16, CpuAttentionBackend(), None, DEEP_TREE) == []


def test_the_attention_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same check with bf16 SDPA (the path before fp64) finds differing rows: it is not vacuous."""
    monkeypatch.setattr(torch_backend, "ROW_INVARIANT_DTYPES", ())
    assert any(_tree_vs_decode(ctx, other, torch.bfloat16) for ctx, other in CASES)


# --- the real model in bf16 ----------------------------------------------------------------------

N_TOKENS = 48


@pytest.fixture(scope="module")
def bf16_engine(model_dir: Path) -> Iterator[LLMEngine]:
    eng = LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16", num_kv_blocks=1024, max_num_seqs=16,
                                 max_num_batched_tokens=1024))
    eng.speculator.cost, eng.speculator.max_step_tokens = FreeWideSteps(), 4096  # draft whatever it can
    yield eng


def _greedy(eng: LLMEngine, prompts: list[list[int]], lookahead: bool, batched: bool) -> list[list[int]]:
    params = [SamplingParams(temperature=0.0, max_tokens=N_TOKENS, ignore_eos=True, lookahead=lookahead)
              for _ in prompts]
    if batched:
        return [o.output_ids for o in eng.generate(prompts, params)]
    return [eng.generate([p], [q])[0].output_ids for p, q in zip(prompts, params)]


def test_bf16_lookahead_equals_plain_decoding(bf16_engine: LLMEngine, model_dir: Path) -> None:
    eng = bf16_engine
    prompts = code_edit_ids(eng.tokenizer, 2) + engine_prompts(eng.tokenizer, 0, 1)
    cold = _greedy(eng, prompts, lookahead=False, batched=False)  # first sight of each prompt: cold prefill
    accepted = eng.speculator.stats.num_accepted_tokens
    on = _greedy(eng, prompts, lookahead=True, batched=False)  # prefix-cache hits from here on
    assert eng.speculator.stats.num_accepted_tokens > accepted + N_TOKENS, "lookahead barely drafted"
    assert on == cold, "lookahead changed bf16 greedy output"
    assert _greedy(eng, prompts, lookahead=True, batched=True) == cold, "batched lookahead differs"
    assert _greedy(eng, prompts, lookahead=False, batched=True) == cold, "batched plain decoding differs"
    # transformers in bf16 rounds its own way (bf16 SDPA, fused linear): equal up to bf16 near ties
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16).eval()
    for p, got in zip(prompts, cold):
        ref = hf_greedy(hf, p, N_TOKENS)
        match = compare_greedy(ref, got[: len(ref.tokens)] if len(ref.tokens) < N_TOKENS else got)
        assert match.ok, match.message
