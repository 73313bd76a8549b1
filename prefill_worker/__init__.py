"""Prefill worker: prompt KV (reusing the kvstore's prefix), first token, KV held for decode."""
