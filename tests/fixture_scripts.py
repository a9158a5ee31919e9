"""The Python files in data/fixtures/ as modules: they are run as scripts there, not a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "fixtures"


def load(name: str) -> ModuleType:
    """data/fixtures/<name>.py, executed as a fresh module (a test may change its globals)."""
    spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
