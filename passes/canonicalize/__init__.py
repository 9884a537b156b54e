"""Canonicalization passes: one form for every exported model."""
