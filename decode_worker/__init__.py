"""Decode worker: pulls handed-over KV, runs the continuous batch, streams tokens."""
