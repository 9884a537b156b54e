"""Named pipelines: ``default{uniform=w4a8}`` in a pipeline string, standing for a list of steps.

A named pipeline has documented ``Options`` like a pass (so ``--help-passes`` lists them and the
pipeline parser converts and checks them the same way) and registers under its name in the same
registry, so no pass can take its name. Which steps it stands for may depend on the compilation
(is there calibration data? which chip?), so it expands only once bound to a ``CompileContext``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from mpqc.passes.infra.base import NoOptions
from mpqc.passes.infra.context import CompileContext

__all__ = ["NamedPipeline"]


class NamedPipeline(abc.ABC):
    """Base of the named pipelines; subclasses set ``name``, ``Options`` and ``expand``."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    #: A named pipeline forwards no options to a component (see ``Pass.forwards``).
    forwards: ClassVar[None] = None

    @classmethod
    @abc.abstractmethod
    def expand(cls, options: Any, context: CompileContext) -> str:
        """The pipeline text this named pipeline stands for in ``context``."""
