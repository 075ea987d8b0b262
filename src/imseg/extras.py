"""Optional packages: import one, or fail in one line naming the extra that installs it.

onnxruntime, OpenVINO, NNCF and ExecuTorch are large and only some users
deploy; they live in pip extras, and a command that needs one says which.
"""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional package a command needs is not installed."""


def require(module: str, extra: str, needed_for: str) -> ModuleType:
    """``import module``, or raise `MissingExtraError`: "<needed_for> needs <module>: pip install 'imseg[extra]'"."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        # Only a missing top-level package is "not installed"; a broken install shows its own error.
        if e.name is not None and e.name.split(".")[0] != top:
            raise
        raise MissingExtraError(f"{needed_for} needs {top}, which is not installed: pip install 'imseg[{extra}]'") \
            from None
