"""``mpqc.core`` is the lowest layer: every other layer may import it, it imports none of them."""

from __future__ import annotations

import ast
import pathlib

import mpqc.core


def test_core_imports_nothing_of_mpqc_but_itself() -> None:
    folder = pathlib.Path(mpqc.core.__file__).parent
    for source in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith("mpqc") or name.startswith("mpqc.core"), (source, name)
