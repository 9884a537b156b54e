"""The evaluator's sessions: the whole fake-quant graph's, the float reference's, and one layer's
suffix at a time after a float run of the prefix (``cut.py`` cuts the graphs).

Split from ``core.py``, which holds what a configuration means (the control inputs); this holds
how the graphs it feeds are opened and run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from mpqc.passes.lib.evaluator import cut
from mpqc.passes.lib.evaluator.graph import PREFIX, LayerSites
from mpqc.passes.lib.evaluator.measures import Measure, Outputs, output_error
from mpqc.passes.lib.evaluator.workers import Shipped

__all__ = ["Config", "Sessions"]

#: Layer name -> (weight bits, activation bits), or ``(w, 8, True)`` for a dynamic range
#: (``core.Bits``); 32 means float, a missing layer stays float.
Config = Mapping[str, tuple]


class Sessions(Shipped):
    """The evaluator's side that opens and runs sessions.

    The class using it holds ``samples``, ``output_names``, ``_sites`` (``LayerSites`` by layer),
    ``_controls(config, layers)`` (the control inputs of a configuration) and the caches below."""

    samples: list[dict[str, np.ndarray]]
    output_names: list[str]
    _sites: dict[str, LayerSites]
    _session: ort.InferenceSession | None
    _reference: list[Outputs] | None
    _float: cut.Fixed | None
    _slices: dict[tuple[str, int], onnx.TensorProto]
    #: ``(config, layers) ->`` the control inputs of ``layers`` under ``config``.
    _controls: Callable[[Config, Collection[str] | None], dict[str, np.ndarray]]

    @property
    def reference(self) -> list[Outputs]:
        """The float model's outputs per sample, computed once: every control fixed at float (no
        weight stacks, no quantizers), in a session like the suffixes' (``layer_errors``)."""
        if self._reference is None:
            start = time.perf_counter()
            floats = self._store.session(
                cut.cut(self._proto(), self._float_model(), [], self.output_names), fast=True
            )
            self._reference = [
                floats.run(self.output_names, cut.declared_inputs(floats, sample))
                for sample in self.samples
            ]
            self._reference_seconds = time.perf_counter() - start
        return self._reference

    def layer_errors(
        self, task: Sequence[tuple[str, Sequence[Config]]], measure: Measure = "mse"
    ) -> list[list[float]]:
        """Per (layer, configurations quantizing only that layer): each configuration's error.

        The float model runs once over the samples, keeping the values every listed layer's suffix
        reads (the layer's input and whatever else crosses the cut); then each layer's suffix — the
        nodes downstream of its controls, with every other layer fixed at float and its quantizers
        removed — gets one session and runs each configuration. The numbers are those of ``run``
        to float rounding: the same nodes compute on the same values, the unchanged prefix is not
        recomputed, and the prefix and suffix sessions, which hold no Q/DQ pair and are read only
        at their outputs, run with every graph optimization (``runtime.session(fast=True)``).
        """
        float_controls = self._float_controls()
        proto = self._proto()
        suffixes: dict[str, onnx.ModelProto] = {}
        boundaries: dict[str, list[str]] = {}
        for name, _ in task:
            own = f"{PREFIX}.{self._sites[name].index}."
            fixed = cut.fix_controls(
                proto,
                {k: v for k, v in float_controls.items() if not k.startswith(own)},
                self._slices,
            )
            boundaries[name] = cut.suffix_boundary(proto, fixed, own)
            suffixes[name] = cut.cut(proto, fixed, boundaries[name], self.output_names)
        wanted = sorted(
            {b for boundary in boundaries.values() for b in boundary} - set(self.samples[0])
        )
        self.reference  # noqa: B018 - computed before the whole graph's session is let go
        self._session = None  # its pages are not needed while the suffixes run
        prefix = (
            self._store.session(cut.cut(proto, self._float_model(), [], wanted), fast=True)
            if wanted
            else None
        )
        values = [
            {
                **sample,
                **dict(
                    zip(
                        wanted, prefix.run(wanted, cut.declared_inputs(prefix, sample)), strict=True
                    )
                ),
            }
            if prefix
            else dict(sample)
            for sample in self.samples
        ]
        del prefix
        results = []
        for name, configs in task:
            boundary, suffix_proto = boundaries[name], suffixes.pop(name)
            for value in suffix_proto.graph.input:
                if value.name in boundary:
                    value.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(
                        np.asarray(values[0][value.name]).dtype
                    )
            inputs = {value.name for value in suffix_proto.graph.input}
            suffix = self._store.session(suffix_proto, fast=True)
            errors = []
            for config in configs:
                controls = {k: v for k, v in self._controls(config, (name,)).items() if k in inputs}
                outputs = [
                    suffix.run(self.output_names, {**{b: v[b] for b in boundary}, **controls})
                    for v in values
                ]
                errors.append(output_error(self.reference, outputs, measure))
            results.append(errors)
            del suffix  # before the next one is made: each holds its downstream weights, prepacked
        return results

    def _get_session(self) -> ort.InferenceSession:
        if self._session is None:
            self._session = self._store.session(self._proto())
        return self._session

    def _proto(self) -> onnx.ModelProto:
        """The fake-quant graph (read back from its file in a worker process)."""
        if self._parsed is None:
            self._parsed = onnx.load(self._path("model.onnx"), load_external_data=False)
        return self._parsed

    def _float_controls(self) -> dict[str, np.ndarray]:
        return self._controls({})

    def _float_model(self) -> cut.Fixed:
        """The fake-quant graph with every control fixed at float: the float model."""
        if self._float is None:
            self._float = cut.fix_controls(self._proto(), self._float_controls(), self._slices)
        return self._float
