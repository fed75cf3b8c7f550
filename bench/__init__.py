"""Benchmark of application-grid-wrapper at scale: ``python -m bench`` (``--quick`` for a short run)."""
