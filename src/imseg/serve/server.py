"""`imseg serve`: the page and the API on one port, served by uvicorn.

``/`` is the Gradio page, ``/api/...`` the HTTP API (``/api/docs`` its
OpenAPI page); both share one `Predictor`, so one model in memory and one
bound on the requests running or waiting.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

from imseg.serve.limits import Limits, guard_pil
from imseg.serve.predictor import Predictor, load_predictor

MAX_SAMPLES = 48
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# Fonts the browser has: the page must not wait on a web font it cannot fetch (offline machines).
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]


def sample_images(folder: str | Path) -> list[Path]:
    """The first `MAX_SAMPLES` pictures in ``folder`` (sorted by name), offered as samples on the page."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--samples {folder} is not a folder")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SAMPLE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"--samples {folder} holds no pictures ({', '.join(SAMPLE_SUFFIXES)})")
    return found[:MAX_SAMPLES]


def check_port(host: str, port: int) -> None:
    """Refuse a port something else listens on now, before the model is loaded (uvicorn would say so after)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: {e}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no clash
        try:
            probe.bind(address)
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None


def build_app(predictor: Predictor, workdir: Path, samples: Sequence[Path] = ()):
    """A FastAPI app: the API routes, with the Gradio page mounted at ``/``."""
    import gradio as gr
    from fastapi import FastAPI

    from imseg.serve.api import api_router
    from imseg.serve.app import build_page, page_css

    app = FastAPI(title="imseg serve", description="Semantic segmentation of uploaded images (docs/serve.md)",
                  docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)
    app.include_router(api_router(predictor))
    page = build_page(predictor, workdir, samples)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
    return gr.mount_gradio_app(app, page, path="/", max_file_size=predictor.limits.max_bytes,
                               allowed_paths=sorted({str(s.parent) for s in samples}), theme=theme,
                               css=page_css(predictor.palette), show_error=True)


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 7860, samples: str | Path | None = None,
          limits: Limits = Limits(), backend: str = "auto", device: str = "auto", mc_samples: int = 8,
          threads: int | None = None) -> int:
    """Load ``model`` and serve the page and the API until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from a model server
    import uvicorn

    check_port(host, port)
    guard_pil(limits)
    pictures = sample_images(samples) if samples else []
    predictor = load_predictor(model, limits, backend=backend, device=device, mc_samples=mc_samples,
                               threads=threads)
    with tempfile.TemporaryDirectory(prefix="imseg-serve-") as workdir:
        app = build_app(predictor, Path(workdir), pictures)
        url = f"http://{host}:{port}"
        print(f"imseg serve: {predictor.meta.name} from {model} ({predictor.backend}); page {url}/ , "
              f"API POST {url}/api/segment (docs {url}/api/docs); {limits.describe()}", flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
