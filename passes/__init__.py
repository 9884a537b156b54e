"""mpqc's passes and the infrastructure that runs them.

Importing this package registers the built-in passes; ``names()`` and ``get(name)`` also find
passes that other packages declare in the ``mpqc.passes`` entry-point group.
"""

from mpqc.passes.infra.base import NoOptions, Pass, PassInputError, option
from mpqc.passes.infra.context import CompileContext
from mpqc.passes.infra.instruments import IRPrinter, Progress, Timing
from mpqc.passes.infra.manager import PassManager
from mpqc.passes.infra.named import NamedPipeline
from mpqc.passes.infra.pipeline import (
    PassSpec,
    build_pipeline,
    expand_pipeline,
    format_pipeline,
    parse_pipeline,
    resolve_pipeline,
)
from mpqc.passes.infra.registry import get, names, register
from mpqc.passes.lib.data import CalibrationData, DataError, load_calibration

# Built-in passes: importing a module registers its passes.
from mpqc.passes.canonicalize import canonicalize, fold_batchnorm, fold_constants  # noqa: F401  isort: skip
from mpqc.passes.analysis import calibrate  # noqa: F401

from mpqc.passes.lower import lower_qdq  # noqa: F401  isort: skip
from mpqc.passes.verify import verify  # noqa: F401  isort: skip
from mpqc.passes.analysis import cost  # noqa: F401  isort: skip
from mpqc.passes.choose import plan, search  # noqa: F401  isort: skip
from mpqc.passes.recover import recover  # noqa: F401  isort: skip
from mpqc.passes.analysis import (
    sensitivity_entropy,  # noqa: F401
    sensitivity_orthogonality,  # noqa: F401
    sensitivity_output,  # noqa: F401
    sensitivity_task,  # noqa: F401
    sensitivity_weight_error,  # noqa: F401
)  # noqa: F401  isort: skip

from mpqc.passes import pipelines  # noqa: F401  isort: skip  (named pipelines, over the passes)

__all__ = [
    "CalibrationData",
    "CompileContext",
    "DataError",
    "IRPrinter",
    "NamedPipeline",
    "NoOptions",
    "Pass",
    "PassInputError",
    "PassSpec",
    "PassManager",
    "Progress",
    "Timing",
    "build_pipeline",
    "expand_pipeline",
    "format_pipeline",
    "get",
    "load_calibration",
    "names",
    "option",
    "parse_pipeline",
    "register",
    "resolve_pipeline",
]
