"""infra/stack.py loaded as a module (infra/ is a folder of deployment files, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_stack():
    if "instill_stack" in sys.modules:
        return sys.modules["instill_stack"]
    spec = importlib.util.spec_from_file_location("instill_stack", REPO / "infra" / "stack.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["instill_stack"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
