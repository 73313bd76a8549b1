"""Grove's KV block store: a trie-indexed, tiered (GPU/CPU/disk) prefix cache served over gRPC.

Who owns what (one concept per module):

    config.py      frozen configuration: block geometry, tiers, capacities, server flags
    types.py       small result values shared by the store, the servicer and the client
    errors.py      typed errors; the servicer maps them to gRPC status codes
    tier.py        one pool of blocks (tensor + BlockAllocator) on one device
    trie.py        the radix trie over full token blocks (the prefix index), per namespace
    lru.py         per-tier LRU order over trie nodes
    leases.py      leases: reference counts with an expiry, read (matched) or write (allocated)
    store.py       KVStore: the manager joining tiers, trie, LRU and leases; check_integrity()
    byte_stream.py chunked bytes of a list of blocks (the gRPC fallback data plane)
    nixl_plane.py  generic NIXL agent wrapper: register pools, READ/WRITE remote blocks, notify
    metrics.py     prometheus metrics (grove:kvstore_*)
    servicer.py    thin gRPC servicer over KVStore
    server.py      create_server(address) -> (server, port), health, graceful shutdown
    cli.py         flags of ``python -m kvstore``
    client.py      KVStoreClient, used by prefill and decode workers
    shared_cache.py SharedCache: the store as a worker leans on it (a miss when away; writes in the background)
"""
