"""Choosing bits: the search pass that turns analyses into a per-layer choice."""
