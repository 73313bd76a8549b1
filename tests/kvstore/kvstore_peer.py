"""A second worker process for the two-process tests: match a prompt in the kvstore, read the
blocks into its own (NIXL-registered) pool, and print one JSON line with a digest per block.

    python tests/kvstore/kvstore_peer.py --address 127.0.0.1:PORT --tokens 0:128 [--no-nixl]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys

import torch
import uvloop

from engine.kv_layout import KVLayout
from kvstore.client import KVStoreClient


def block_digests(pool: torch.Tensor, ids: list[int]) -> list[str]:
    return [hashlib.sha256(pool[i].contiguous().view(torch.uint8).numpy().tobytes()).hexdigest() for i in ids]


async def main(args: argparse.Namespace) -> dict:
    layout = KVLayout(args.model_id, "float32", args.block_size, args.num_layers, args.num_kv_heads, args.head_dim)
    start, stop = map(int, args.tokens.split(":"))
    tokens = list(range(start, stop))
    pool = torch.zeros(len(tokens) // args.block_size + 3, *layout.block_shape)
    async with KVStoreClient(args.address, layout, pool, use_nixl=args.nixl) as kv:
        hit = await kv.match(tokens)
        ids = list(range(3, 3 + len(hit.handles)))  # not the store's ids: an independent block table
        await kv.read(hit, ids)
        await kv.release(hit.lease_id)
        return {"plane": kv.data_plane, "num_tokens": hit.num_tokens, "tiers": [h.tier for h in hit.handles],
                "digests": block_digests(pool, ids)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--tokens", required=True, help="START:STOP, the prompt is range(START, STOP)")
    p.add_argument("--nixl", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--model-id", default="two-process")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.stdout.write(json.dumps(uvloop.run(main(p.parse_args()))) + "\n")
