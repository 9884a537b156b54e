"""Make the repository's ``bench`` folder importable as ``bench``, and nothing else.

The benchmark harness is not installed, and the repository root stays off ``sys.path`` on purpose (so
``mpqc`` always resolves to the installed package); so the one package is loaded from its folder here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"

if "bench" not in sys.modules or getattr(sys.modules["bench"], "__file__", None) != str(BENCH / "__init__.py"):
    spec = importlib.util.spec_from_file_location("bench", BENCH / "__init__.py",
                                                  submodule_search_locations=[str(BENCH)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    spec.loader.exec_module(module)
