"""The configurable evaluator, by job: ``core`` (the ``Evaluator``: configurations in, outputs and
errors out), ``graph`` (building the fake-quant graph), ``sessions`` (opening and running its
sessions: the reference, one layer's suffix after the float prefix), ``cut`` (cutting the graphs
they run), ``workers`` (executors and worker processes) and ``measures`` (output distances)."""

from mpqc.passes.lib.evaluator.core import Config, Evaluator, batch_first
from mpqc.passes.lib.evaluator.measures import Measure, Outputs, output_error

__all__ = ["Config", "Evaluator", "Measure", "Outputs", "batch_first", "output_error"]
