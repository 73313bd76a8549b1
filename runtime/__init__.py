"""Process plumbing every Grove service shares: gRPC server set-up, health, signals, readiness."""
