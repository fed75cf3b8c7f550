"""Kubernetes API shapes and protocol helpers shared by the wrapper, cache and simulator (no I/O)."""
