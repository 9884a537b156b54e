"""Shapes onnx cannot infer, read from runs of the model on calibration samples.

Dynamic reshapes, data-dependent slices and values inside If/Loop/Scan bodies often have shapes
onnx's inference leaves open. onnxruntime computes them: a main-graph value is fetched as an extra
output; a body value cannot be (it does not exist in the main graph's scope), so its *shape* is
computed where it lives and carried out (``bodies.expose``) as a record ``[rank, d0, d1, ...]``,
one per time the body ran: per step of a Scan, per trip of a Loop (a Loop's values come out
flattened, the records one after the other), once for the If branch that ran.

A Loop's value may change shape from one trip to the next (a sequence that grows); such a value
has several shapes, and the caller chooses what to price (``Observed.varying``). Samples are run
one at a time until every value was seen (an If branch the first sample does not take may be taken
by the next), up to ``MAX_SAMPLES``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper

from mpqc.passes.infra.base import PassInputError
from mpqc.passes.lib.bodies import expose
from mpqc.passes.lib.runtime import model_session

__all__ = ["MAX_SAMPLES", "Observed", "observe_shapes"]

#: The most calibration samples run to find the shapes of values the first one did not reach.
MAX_SAMPLES = 8


@dataclasses.dataclass(frozen=True)
class Observed:
    """What the runs showed: every shape of each value reached, in the order first seen."""

    shapes: dict[str, list[tuple[int, ...]]]

    def largest(self) -> dict[str, tuple[int, ...]]:
        """Each value's largest shape by element count (its only one, mostly)."""
        return {name: max(found, key=np.prod) for name, found in self.shapes.items()}

    def varying(self) -> dict[str, list[tuple[int, ...]]]:
        """The values seen with more than one shape (a Loop's that change from trip to trip)."""
        return {name: found for name, found in self.shapes.items() if len(found) > 1}


def observe_shapes(
    proto: onnx.ModelProto,
    folder: str | None,
    names: Iterable[str],
    samples: Iterable[Mapping[str, np.ndarray]],
) -> Observed:
    """The shapes of ``names`` (values of ``proto``'s main graph or of its bodies) as onnxruntime
    computes them on ``samples``."""
    wanted = set(names)
    main = {out for node in proto.graph.node for out in node.output} & wanted
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    records = _record_shapes(probe.graph, wanted - main, is_main=True)
    exposed = expose(probe, dict.fromkeys(records, onnx.TensorProto.INT64))
    model = exposed.proto
    known = {value.name for value in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in main - known)
    fetched = [value.name for value in model.graph.output]
    session = None
    shapes: dict[str, list[tuple[int, ...]]] = {}
    for sample in itertools.islice(samples, MAX_SAMPLES):
        if session is None:
            session = model_session(model, folder)
        try:
            outputs = session.run(fetched, dict(sample))
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise PassInputError(
                f"cost: cannot run the model to read its shapes ({str(exc).splitlines()[0]}); "
                "give the input shapes",
                field="shapes",
            ) from None
        for name, value in zip(fetched, outputs, strict=True):
            if name in exposed.outputs:
                inner = records[exposed.outputs[name][0]]
                found = _parse_records(np.asarray(value).reshape(-1))
            elif name in main:
                inner, found = name, [tuple(np.shape(value))]
            else:
                continue
            if found:  # (none: the sample did not run the body)
                seen = shapes.setdefault(inner, [])
                seen += [shape for shape in found if shape not in seen]
        if wanted <= shapes.keys():
            break
    return Observed(shapes)


def _record_shapes(graph: onnx.GraphProto, names: set[str], is_main: bool) -> dict[str, str]:
    """Add to the bodies of ``graph`` a record ``[rank, d0, d1, ...]`` of each value in
    ``names`` they compute or take as input; record value -> the value it describes."""
    records: dict[str, str] = {}
    if not is_main:
        own = [value.name for value in graph.input]
        own += [out for node in graph.node for out in node.output]
        for name in own:
            if name in names:
                shape, rank, record = (f"{name}.mpqc_{part}" for part in ("shape", "rank", "rec"))
                graph.node.extend(
                    [
                        helper.make_node("Shape", [name], [shape], name=shape),
                        helper.make_node("Shape", [shape], [rank], name=rank),
                        helper.make_node("Concat", [rank, shape], [record], name=record, axis=0),
                    ]
                )
                records[record] = name
    for node in list(graph.node):
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                records.update(_record_shapes(body, names, is_main=False))
    return records


def _parse_records(flat: np.ndarray) -> list[tuple[int, ...]]:
    """The shapes in records laid end to end (empty: the body never ran)."""
    shapes: list[tuple[int, ...]] = []
    at = 0
    while at < flat.size:
        rank = int(flat[at])
        shape = tuple(int(d) for d in flat[at + 1 : at + 1 + rank])
        if shape not in shapes:
            shapes.append(shape)
        at += 1 + rank
    return shapes
