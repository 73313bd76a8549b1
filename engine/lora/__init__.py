"""LoRA adapters served beside the base model, as vLLM serves them (``--lora-modules``).

    adapter.py   a PEFT adapter read into the decoder's fused projections
    registry.py  a worker's adapters, loaded on first use from the path a request names
    batch.py     a step's rows grouped by adapter, and their additions to each projection

A request names its adapter (engine.request.LoraRef: name, path, digest); its KV and its prefix
caches are the adapter's own (``engine.prefix_cache.cache_namespace``), so no block computed with
one adapter is read by a request with another, or with none.
"""
