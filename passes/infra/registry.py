"""The pass registry: name -> pass class (or named pipeline), for pipeline strings and ``mpqc-opt``.

Built-in passes register with the ``@register`` decorator when ``mpqc.passes`` imports them. Third
parties add passes by installing a package that declares an entry point in the ``mpqc.passes``
group (``my-pass = my_pkg.passes:MyPass``); those are loaded the first time a name is looked up,
so installing a plug-in never slows down ``import mpqc``.
"""

from __future__ import annotations

import difflib
from importlib import metadata

from mpqc.passes.infra.base import Pass, PassInputError
from mpqc.passes.infra.named import NamedPipeline

__all__ = ["ENTRY_POINT_GROUP", "get", "names", "register"]

ENTRY_POINT_GROUP = "mpqc.passes"

#: What a name in pipeline text stands for.
Registered = type[Pass] | type[NamedPipeline]

_PASSES: dict[str, Registered] = {}
_plugins_loaded = False


def register(cls: Registered) -> Registered:
    """Class decorator: make a pass or a named pipeline available under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not name or name != name.lower() or " " in name:
        raise TypeError(f"{cls.__qualname__} needs a kebab-case class attribute 'name'")
    existing = _PASSES.get(name)
    if existing is not None and existing is not cls:
        raise TypeError(
            f"pass name {name!r} is taken by {existing.__module__}.{existing.__qualname__}"
        )
    _PASSES[name] = cls
    return cls


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise PassInputError(
                f"entry point {entry.name!r} in {ENTRY_POINT_GROUP!r} is not an mpqc Pass class"
            )
        if getattr(cls, "name", None) != entry.name:
            raise PassInputError(
                f"entry point {entry.name!r} points to a pass named {getattr(cls, 'name', None)!r}"
            )
        register(cls)


def names() -> list[str]:
    """Registered pass names, sorted."""
    _load_plugins()
    return sorted(_PASSES)


def get(name: str) -> Registered:
    """The pass class or named pipeline registered as ``name``; a PassInputError naming close
    matches otherwise."""
    _load_plugins()
    try:
        return _PASSES[name]
    except KeyError:
        close = difflib.get_close_matches(name, _PASSES, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see mpqc-opt --help-passes"
        raise PassInputError(f"unknown pass '{name}': {hint}") from None
