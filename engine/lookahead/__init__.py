"""Batched lookahead decoding: n-gram tries (per request and global), token-tree drafts, verification."""
