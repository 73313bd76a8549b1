"""Gateway: OpenAI-compatible HTTP + the grove.v1 gRPC API; tokenizes and routes to the workers."""
