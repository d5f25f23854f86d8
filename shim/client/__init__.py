"""cf-orch's task protocol (sans-I/O) and its sync and async clients."""
