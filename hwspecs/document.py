"""Reading one spec file into a mapping, refusing what is not a page of YAML text.

A spec may come from anywhere, so each step bounds the work before doing it:
1. Files over 1 MiB or with binary content are refused before parsing: a YAML parser fed a model
   file by mistake should not be the one to find out.
2. The safe loader (never ``load``) composes the YAML node graph, refusing nesting deeper than
   ``MAX_SPEC_DEPTH`` as it goes: the composer recurses, so 50 000 brackets would otherwise end in
   a RecursionError.
3. Before anything expands an alias, the node graph is measured as if expanded: a 2 KB "billion
   laughs" of nested aliases shares its nodes on load, but the schema validator walks (and renders
   into its messages) the expanded value until memory runs out.
4. Only then are the Python values built; the top level must be a mapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mpqc.hwspecs.errors import SpecError

MAX_SPEC_BYTES = 1 << 20
MAX_SPEC_DEPTH = 64
MAX_SPEC_VALUES = 100_000


def read_document(path: Path) -> dict[str, Any]:
    """One YAML file as a mapping, after the checks above."""
    with path.open("rb") as file:
        raw = file.read(MAX_SPEC_BYTES + 1)
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(
            path,
            "",
            f"file is over {MAX_SPEC_BYTES} bytes, too large for a spec",
            f"at most {MAX_SPEC_BYTES} bytes (1 MiB)",
        )
    if b"\x00" in raw:
        raise SpecError(
            path, "", "binary content (NUL bytes), not a YAML text file", "UTF-8 YAML text"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(path, "", f"not UTF-8 text (byte {exc.start})", "UTF-8 YAML text") from None
    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_expansion(path, root)
        document = None if root is None else loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(path, "", f"invalid YAML{where}: {problem}") from None
    finally:
        loader.dispose()
    if not isinstance(document, dict):
        kind = "empty" if document is None else type(document).__name__
        raise SpecError(
            path,
            "",
            f"top level is {kind}, not a mapping",
            "a YAML mapping with fields description, bits, precisions, memory, ...",
        )
    return document


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing nesting deeper than ``MAX_SPEC_DEPTH`` before the composer
    recurses."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_SPEC_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_SPEC_DEPTH} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_expansion(path: Path, root: yaml.Node) -> None:
    """Refuse a node graph whose aliases expand it past ``MAX_SPEC_VALUES`` values or
    ``MAX_SPEC_DEPTH`` levels, or refer to themselves.  Linear in the composed nodes: an alias is
    the anchored node itself, and each node's expanded size is counted once."""
    shapes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()

    def shape(node: yaml.Node) -> tuple[int, int]:
        """(values, depth) of ``node`` with its aliases expanded."""
        if id(node) in shapes:
            return shapes[id(node)]
        if id(node) in open_nodes:
            raise SpecError(
                path,
                "",
                f"the YAML alias at line {node.start_mark.line + 1} refers to itself",
                "aliases of values defined before them",
            )
        open_nodes.add(id(node))
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        values, depth = 1, 1
        for child in children:
            child_values, child_depth = shape(child)
            values, depth = values + child_values, max(depth, child_depth + 1)
        open_nodes.discard(id(node))
        shapes[id(node)] = values, depth
        return values, depth

    values, depth = shape(root)
    if depth > MAX_SPEC_DEPTH:
        raise SpecError(
            path,
            "",
            f"YAML aliases nest it deeper than {MAX_SPEC_DEPTH} levels",
            f"at most {MAX_SPEC_DEPTH} levels: write values out, not aliases of aliases",
        )
    if values > MAX_SPEC_VALUES:
        problem = (
            f"expands to more than {MAX_SPEC_VALUES} values through YAML aliases"
            if values > len(shapes)
            else f"holds more than {MAX_SPEC_VALUES} values"
        )
        raise SpecError(
            path,
            "",
            problem,
            f"at most {MAX_SPEC_VALUES}: write values out, not aliases of aliases",
        )
