"""The one lowering plan (``decide.py``; where output quantizers go: ``outputs.py``) and its
byte sum (``size.py``).

``lower-qdq`` emits the plan, the size count sums it, the evaluator simulates it, the cost pass
prices it: a new lowering form is one edit in ``decide.py``.
"""

from mpqc.passes.lib.plan.decide import (
    CONTRIB_FORMS,
    BiasForm,
    Kernel,
    LayerFacts,
    LayerPlan,
    WeightForm,
    dynamic_form,
    facts_of,
    fusable,
    int32_bias,
    layer_plan,
    plan_layer,
)
from mpqc.passes.lib.plan.outputs import body_result, output_target
from mpqc.passes.lib.plan.size import stored_bytes

__all__ = [
    "CONTRIB_FORMS",
    "BiasForm",
    "Kernel",
    "LayerFacts",
    "LayerPlan",
    "WeightForm",
    "body_result",
    "dynamic_form",
    "facts_of",
    "fusable",
    "int32_bias",
    "layer_plan",
    "output_target",
    "plan_layer",
    "stored_bytes",
]
