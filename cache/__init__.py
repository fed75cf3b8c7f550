"""Upstream informers and the store: List & Watch against the apiserver, cached and filtered."""
