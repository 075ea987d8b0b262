"""`imseg serve`: a web page and an HTTP API around one model (docs/serve.md).

* ``limits``: what an upload may be (bytes, pixels, image formats) and how it is read safely;
* ``predictor``: the model (a checkpoint, or an exported file through `imseg.deploy`) behind a lock,
  with a bounded number of requests waiting;
* ``render``: what a prediction is shown as (overlay with classes toggled off, legend, index PNG, counts);
* ``api``: the HTTP routes (``POST /api/segment``), ``app``: the Gradio page, ``server``: both on one port.

Importing this package loads nothing heavy: `imseg --help` stays fast and a
missing ``[serve]`` extra is reported in one line by `missing_extra`.
"""
from __future__ import annotations

import importlib.util

EXTRA_MODULES = ("gradio", "fastapi", "uvicorn", "python_multipart")
INSTALL_HINT = "pip install 'imseg[serve]'"


def missing_extra() -> str | None:
    """The one line to show when the ``[serve]`` extra is not installed, else None."""
    missing = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"{', '.join(missing)} not installed; the web app needs the serve extra: {INSTALL_HINT}"
