"""Lowering passes: from chosen bits to a deployable quantized model."""
