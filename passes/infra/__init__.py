"""Pass infrastructure: the pass contract, registry, pipeline text, manager and instruments."""
