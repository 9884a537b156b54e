"""Verification: the emitted model is valid, runs, and stays close to float."""
