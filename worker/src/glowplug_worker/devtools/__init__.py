"""Developer tools: small helpers for tests, benchmarks and `make demo` (not used in a pod)."""
