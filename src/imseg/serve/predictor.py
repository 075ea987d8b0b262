"""One model shared by the page and the API: a lock around it, and a bound on who may wait for it.

The model runs one image at a time (a CPU model already uses every core for
one image; two at once would only double the memory), and always on the same
thread. That second rule keeps the server's memory flat: glibc gives every
thread that allocates its own malloc arena and keeps the freed activation
buffers (megabytes each, under its mmap threshold) there for reuse, so a
model called from the web server's pool of worker threads ends up holding
one set of buffers per thread it ever ran on (measured: 997 -> 1713 MiB over
200 requests from 8 clients, benchmarks/results/serve-load.json before the
change). Requests beyond ``Limits.queue`` running or waiting are refused at
once with `Busy` instead of piling up until the machine runs out of memory
or clients time out.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
from PIL import Image
from torch import nn

from imseg.meta import ModelMeta, meta_of
from imseg.serve.limits import Limits

T = TypeVar("T")


class Busy(RuntimeError):
    """Too many requests running or waiting; the API answers 503."""

    status = 503


class Predictor:
    """``model``: an imseg model carrying its metadata (a loaded checkpoint, or an exported file wrapped by
    `imseg.deploy.load_runtime_model`); ``backend``: the runtime's name, for the page and ``/api/info``."""

    def __init__(self, model: nn.Module, limits: Limits = Limits(), backend: str = "torch",
                 mc_samples: int = 8, source: str = "") -> None:
        from imseg.engine.predict import model_inference
        from imseg.uncertainty import has_dropout

        self.model = model.eval()
        self.meta: ModelMeta = meta_of(model)
        channels = self.meta.preprocessing.num_channels
        if channels not in (1, 3):
            raise ValueError(f"{source or 'the model'} reads {channels}-band images; the web app sends RGB or grey "
                             f"pictures: use `imseg predict` (with --raster for GeoTIFFs)")
        self.inference = model_inference(model)  # the settings the checkpoint stores, as `imseg predict` uses
        self.limits, self.backend, self.source = limits, backend, source
        self.mc_samples = mc_samples if has_dropout(model) else 0
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imseg-model",
                                                initializer=self._remember_model_thread)
        self._model_thread_id: int | None = None
        self._slots = threading.BoundedSemaphore(limits.queue)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.meta.class_names

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return self.meta.palette[: len(self.meta.class_names)]

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of the ``Limits.queue`` places for a whole request (reading the upload included), or
        raise `Busy` at once when all are taken."""
        if not self._slots.acquire(blocking=False):
            raise Busy(f"the server is busy ({self.limits.queue} requests running or waiting); try again shortly")
        try:
            yield
        finally:
            self._slots.release()

    def segment(self, image: Image.Image) -> np.ndarray:
        """The class index of every pixel, ``[H, W]``: what `imseg predict` writes for the same picture."""
        from imseg.engine.predict import predict

        return self.on_model_thread(predict, self.model, image, self.inference)

    def uncertainty(self, image: Image.Image) -> np.ndarray | None:
        """Predictive entropy ``[H, W]`` (nats) from ``mc_samples`` Monte-Carlo dropout passes; None for a
        model without dropout (or with ``mc_samples`` 0)."""
        from imseg.engine.predict import predict_uncertainty

        if self.mc_samples < 1:
            return None
        return self.on_model_thread(predict_uncertainty, self.model, image, self.mc_samples, self.inference)[1]

    def on_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` run on the one thread that runs the model (one call at a time; see the module's
        note on memory), waiting for its turn; called from that thread, it just runs."""
        if threading.get_ident() == self._model_thread_id:
            return fn(*args)
        return self._model_thread.submit(fn, *args).result()

    def _remember_model_thread(self) -> None:
        self._model_thread_id = threading.get_ident()

    def info(self) -> dict:
        """What ``GET /api/info`` tells a client: the model, its classes and colours, the limits."""
        return {"model": self.meta.name, "source": self.source, "backend": self.backend,
                "classes": [{"id": i, "name": n, "colour": list(c)}
                            for i, (n, c) in enumerate(zip(self.class_names, self.palette))],
                "uncertainty": {"mc_dropout_samples": self.mc_samples} if self.mc_samples else None,
                "limits": {"max_bytes": self.limits.max_bytes, "max_pixels": self.limits.max_pixels,
                           "queue": self.limits.queue}}


def load_predictor(path: str | Path, limits: Limits = Limits(), backend: str = "auto", device: str = "auto",
                   mc_samples: int = 8, threads: int | None = None) -> Predictor:
    """The model file ``path`` (checkpoint, ``.safetensors``, model folder, or an export such as ``.onnx``
    run by ``backend``) as a `Predictor`."""
    from imseg.deploy import load_runtime_model
    from imseg.deploy.backends import resolve_backend_name
    from imseg.engine.runtime import resolve_device, set_threads

    name = resolve_backend_name(Path(path), backend)
    if name == "torch":
        set_threads(threads)  # the other runtimes take their thread count when the file is opened
    model = load_runtime_model(path, backend, resolve_device(device) if name == "torch" else "cpu", threads)
    return Predictor(model, limits, backend=name, mc_samples=mc_samples, source=str(path))
