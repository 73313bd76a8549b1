"""Starts the whole stack on one host: kvstore, prefill and decode workers, gateway."""
