"""Triton kernels for Grove's attention backend (TurboAttention: paged, flash-style, tree queries).

Modules (each a private ``@triton.jit`` kernel, a checked host wrapper and a torch reference):
    launch.py            interpreter detection, sizes, SM count, dot precision
    attention_tile.py    paged online-softmax attention of one tile of query rows, shared by both kernels
    paged_attention.py   decode / lookahead-verify attention with split-KV (flash-decoding); on a GPU its
                         row-invariant mode (one program per token, attending its path) takes every chunk
    prefill_attention.py variable-length causal prefill over a paged, partly cached prefix
    kv_write.py          writing new K/V by slot mapping; copying slots (lookahead compaction)
    invariant_matmul.py  row-invariant products (one tile configuration for every row count): 16-bit on a GPU
    invariant_rms_norm.py  row-invariant RMSNorm, one program per row: 16-bit on a GPU
    aot_check.py         compiles the row-invariant kernels for Hopper without a GPU (Triton's ptxas)
    backend.py           ``TritonAttentionBackend``, the engine's ``AttentionBackend`` on these kernels
    bench_attention.py   GPU benchmark (not a test)
    cpu_attention.cpp/.py  the CPU kernel (C++, built on first use) and its checked wrapper; same
                         reference (``paged_attention_ref``); the engine's default on CPU

The Triton modules are imported by the engine only when the "triton" backend is selected, and the
invariant ones only for 16-bit models on a GPU (engine.layers); ``cpu_attention`` imports no Triton.
"""
