"""Engine configuration: a frozen dataclass, validated once; CLI flags map onto it in one place."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from engine.paths import default_model_dir

# Deepest lookahead draft: the CPU attention kernel's AMX path keeps a row's last AMX_TAIL keys out
# of its tiles so that a tree node sums its keys as plain decoding does (kernels/cpu_attention.cpp)
MAX_DRAFT_DEPTH = 32


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str = ""  # local HF directory; "" = the bundled SmolLM2
    dtype: str = "auto"  # "auto" (the model's own), "float32", "bfloat16", "float16"
    device: str = "cpu"
    block_size: int = 16
    kv_cache_gb: float = 1.0  # size of the local KV pool
    num_kv_blocks: int = 0  # overrides kv_cache_gb when > 0
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int = 0  # 0 = the model's max_position_embeddings
    attention_backend: str = "auto"  # "auto", "torch", "triton", "cpu"
    num_threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    prefix_caching: bool = True  # reuse full KV blocks of earlier requests with the same prefix
    lookahead: bool = True  # batched lookahead decoding (per request: SamplingParams.lookahead)
    lookahead_max_depth: int = 16  # deepest draft (copy-heavy text at batch 1 gains ~20% tokens per step over 8)
    lookahead_width: int = 2  # most branches per draft: each request drafts a chain or a tree of this width, whichever pays
    lookahead_max_step_tokens: int = 256  # cap on a step's tokens with drafts
    lookahead_corpus: tuple[str, ...] = ()  # files or folders of text every request drafts from (engine.lookahead.corpus)
    lookahead_state: str = ""  # the global n-gram trie across restarts: loaded at start, saved at shutdown (decode)
    calibration_cache: bool = True  # reuse the step-cost calibration of an earlier start with the same setup
    max_lora_rank: int = 16  # vLLM's: the highest LoRA rank an adapter may have
    max_cpu_loras: int = 8  # vLLM's: adapters a worker keeps loaded (the least recently used go past it)
    max_loras: int = 4  # vLLM's: distinct adapters running at once (each adds its products to every step)

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.block_size < 1 or self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("block_size, max_num_seqs and max_num_batched_tokens must be >= 1")
        if not 1 <= self.lookahead_max_depth <= MAX_DRAFT_DEPTH:
            raise ValueError(f"lookahead_max_depth must be between 1 and {MAX_DRAFT_DEPTH}, got {self.lookahead_max_depth}")
        if self.max_lora_rank < 1 or self.max_cpu_loras < 1 or self.max_loras < 1:
            raise ValueError("max_lora_rank, max_cpu_loras and max_loras must be >= 1")
        if self.kv_cache_gb <= 0 and self.num_kv_blocks <= 0:
            raise ValueError("kv_cache_gb or num_kv_blocks must be positive")

    @property
    def model_dir(self) -> Path:
        return Path(self.model) if self.model else default_model_dir()

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("engine")
        g.add_argument("--model", default="", help="local Hugging Face model directory (default: bundled SmolLM2)")
        g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
        g.add_argument("--device", default="cpu")
        g.add_argument("--block-size", type=int, default=16)
        g.add_argument("--kv-cache-gb", type=float, default=1.0, help="local KV pool size")
        g.add_argument("--num-kv-blocks", type=int, default=0, help="local KV pool size in blocks (overrides --kv-cache-gb)")
        g.add_argument("--max-num-seqs", type=int, default=64)
        g.add_argument("--max-num-batched-tokens", type=int, default=512,
                       help="most tokens a step computes: a longer prompt is computed in chunks of it (default "
                            "%(default)s; scripts/bench_prefill_chunks.py weighs other sizes)")
        g.add_argument("--max-model-len", type=int, default=0)
        g.add_argument("--attention-backend", default="auto", choices=["auto", "torch", "triton", "cpu"])
        g.add_argument("--num-threads", type=int, default=0)
        g.add_argument("--prefix-caching", choices=["on", "off"], default="on",
                       help="reuse this worker's KV blocks across requests sharing a prefix")
        g.add_argument("--lookahead", choices=["on", "off"], default="on", help="batched lookahead decoding")
        g.add_argument("--lookahead-max-depth", type=int, default=16)
        g.add_argument("--lookahead-width", type=int, default=2,
                       help="most branches per draft (the planner picks a chain or a tree per request)")
        g.add_argument("--lookahead-max-step-tokens", type=int, default=256)
        g.add_argument("--lookahead-corpus", nargs="+", default=[], metavar="PATH",
                       help="text every request drafts from beside its own and every request's outputs: files "
                            "(.jsonl: a document a line, a string or {\"text\": ...}; others whole) or folders of "
                            "text files; indexed at start")
        g.add_argument("--lookahead-state", default="", metavar="PATH",
                       help="keep lookahead's global n-gram trie across restarts: loaded from PATH at start (if "
                            "there), saved to it when a decode worker shuts down; {worker_id} in PATH is the "
                            "worker's id (a file each)")
        g.add_argument("--calibration-cache", choices=["on", "off"], default="on",
                       help="reuse the lookahead step-cost calibration of an earlier start on this machine and "
                            "setup (kept under $GROVE_CACHE/step-cost); off: time the steps at every start")
        g.add_argument("--max-lora-rank", type=int, default=16, help="highest rank of a LoRA adapter (vLLM's)")
        g.add_argument("--max-cpu-loras", type=int, default=8,
                       help="LoRA adapters kept loaded; the least recently used is dropped past it (vLLM's)")
        g.add_argument("--max-loras", type=int, default=4,
                       help="distinct LoRA adapters running at once; requests of another wait (vLLM's; each "
                            "running adapter adds its own products to every step)")

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> "EngineConfig":
        return cls(
            model=args.model, dtype=args.dtype, device=args.device, block_size=args.block_size,
            kv_cache_gb=args.kv_cache_gb, num_kv_blocks=args.num_kv_blocks, max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
            attention_backend=args.attention_backend, num_threads=args.num_threads,
            prefix_caching=args.prefix_caching == "on", lookahead=args.lookahead == "on", lookahead_max_depth=args.lookahead_max_depth,
            lookahead_width=args.lookahead_width, lookahead_max_step_tokens=args.lookahead_max_step_tokens,
            lookahead_corpus=tuple(args.lookahead_corpus), lookahead_state=args.lookahead_state,
            calibration_cache=args.calibration_cache == "on", max_lora_rank=args.max_lora_rank,
            max_cpu_loras=args.max_cpu_loras, max_loras=args.max_loras,
        )
