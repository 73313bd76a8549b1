"""Whether a step gives a row the same bits whatever else the step holds: what makes lookahead exact.

Verifying a draft computes its tokens beside the other sequences of the batch, in one step of many
query rows, where plain decoding computes each token alone, one step each. Greedy output is the same
only if every row's logits are bit for bit those of the plain step. Grove's CPU kernels are written
so (tests/engine/test_batch_invariance.py); a GPU's math libraries choose their kernels by shape (a
product's algorithm by its row count, attention's KV split by the batch), so there it is a property
of the device, checked at start by running the model (``forward_row_invariant``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from engine.batch import SeqInput, plan_batch
from engine.block_allocator import BlockAllocator
from engine.kv_pool import KVPool
from engine.model import Model

logger = logging.getLogger(__name__)

# A lookahead tree: two branches from the root, one forking below node 1 (parents among the nodes)
PROBE_TREE = (-1, 0, 1, 0, 3, 1, 5)
# Cached tokens behind the probe's sequences: a decode and a tree, and off the CPU a third decode
# past 1,024 keys, where a GPU's decode attention starts splitting the context (flash-decoding) when
# few sequences share the step (on this CPU it took the bf16 probe from 0.16 s to 1.0 s).
PROBE_CONTEXTS = (40, 150)
LONG_CONTEXT = 1100
# A prompt prefilled beside the tree in one chunk, and alone in two (past 64 tokens, where a GPU's
# prefill once took a kernel of its own: on an H200 bf16 lookahead changed greedy output at 16
# requests, whose prompt chunks share steps with trees, while 1 request stayed exact)
PROBE_CHUNKS = (40, 30)


def _tokens(n: int, seed: int, vocab: int) -> list[int]:
    """n deterministic token ids (spread over the vocabulary, not all alike)."""
    return [(seed * 7919 + i * 104729) % vocab for i in range(n)]


# runner(seqs, step) -> logits: how the probe runs each of its steps, named ("context", "together",
# "a", "root", "child", "branch", "chunk"); a diagnostic may wrap it (scripts/invariance_diag.py)
StepRunner = Callable[[list[SeqInput], str], torch.Tensor]


def forward_row_invariant(model: Model, kv: KVPool, allocator: BlockAllocator, block_size: int,
                          device: torch.device | str, runner: StepRunner | None = None) -> bool:
    """Runs the model over a few hand-built steps and compares logits bit for bit:

    - a decode alone vs the same decode beside a 7-node tree and a decode behind a long context;
    - the tree's root and its child vs those tokens decoded alone, one step each (the child behind
      the root's K/V as the plain step wrote it), which is what a verified draft must equal; and
      likewise the two nodes of the second branch, which in the tree sit after the first branch's;
    - a prompt's last row prefilled in one chunk beside the tree vs in two chunks alone.

    The sequences' contexts are prefilled first; they and their blocks are freed after. Contexts
    the pool cannot hold are left out (the probe then covers less). Returns True when every
    compared row is equal.
    """
    vocab = model.config.vocab_size
    contexts = list(PROBE_CONTEXTS) + ([LONG_CONTEXT] if torch.device(device).type != "cpu" else [])
    need = [-(-(c + len(PROBE_TREE)) // block_size) for c in contexts]
    while contexts and allocator.num_free < sum(need):
        contexts.pop()
        need.pop()
    if len(contexts) < 2:
        logger.info("row-invariance probe skipped: the KV pool holds too few free blocks")
        return True
    chunk_blocks = -(-sum(PROBE_CHUNKS) // block_size)
    with_chunk = allocator.num_free >= sum(need) + chunk_blocks
    tables = [allocator.allocate(n) for n in need] + ([allocator.allocate(chunk_blocks)] if with_chunk else [])
    try:
        def plain(seqs: list[SeqInput], step: str) -> torch.Tensor:
            return model.run(plan_batch(seqs, block_size, device), kv)
        run = runner or plain

        for i, (ctx, table) in enumerate(zip(contexts, tables[:len(contexts)])):
            run([SeqInput(_tokens(ctx, i, vocab), 0, table, logits="none")], "context")
        (ctx_a, ctx_b), (table_a, table_b) = contexts[:2], tables[:2]
        decode_a = SeqInput(_tokens(1, 10, vocab), ctx_a, table_a)
        tree_ids = _tokens(len(PROBE_TREE), 11, vocab)
        tree_b = SeqInput(tree_ids, ctx_b, table_b, parents=PROBE_TREE, logits="all")
        batch = [decode_a, tree_b]
        if len(contexts) > 2:
            batch.append(SeqInput(_tokens(1, 12, vocab), contexts[2], tables[2]))
        chunk_ids = _tokens(sum(PROBE_CHUNKS), 13, vocab)
        if with_chunk:
            batch.append(SeqInput(chunk_ids, 0, tables[-1]))
        together = run(batch, "together")  # rows: a's decode, the tree's nodes, the long decode, the chunk's last
        a_alone = run([decode_a], "a")[0]
        root_alone = run([SeqInput(tree_ids[:1], ctx_b, table_b)], "root")[0]  # writes the root's K/V alone
        child_alone = run([SeqInput(tree_ids[1:2], ctx_b + 1, table_b)], "child")[0]  # node 1: the root's child
        # the second branch, 0 -> 3 -> 4, decoded plainly over the first one's slots: in the tree its
        # nodes sit after nodes of the other branch, in plain decoding right after the root
        branch = [run([SeqInput([tree_ids[n]], ctx_b + depth, table_b)], "branch")[0] for depth, n in ((1, 3), (2, 4))]
        checks = {"a decode beside a tree": (together[0], a_alone),
                  "a tree's root": (together[1], root_alone),
                  "a tree's node at depth 1": (together[2], child_alone),
                  "a second branch's node at depth 1": (together[1 + 3], branch[0]),
                  "a second branch's node at depth 2": (together[1 + 4], branch[1])}
        if with_chunk:
            run([SeqInput(chunk_ids[:PROBE_CHUNKS[0]], 0, tables[-1], logits="none")], "chunk")
            checks["a prompt chunk beside a tree"] = (
                together[-1], run([SeqInput(chunk_ids[PROBE_CHUNKS[0]:], PROBE_CHUNKS[0], tables[-1])], "chunk")[0])
        differ = [name for name, (x, y) in checks.items() if not torch.equal(x, y)]
        if differ:
            logger.info("row-invariance probe: %s differ from plain decoding", ", ".join(differ))
        return not differ
    finally:
        for table in tables:
            allocator.free(table)
