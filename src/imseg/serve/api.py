"""The HTTP API of `imseg serve` (docs/serve.md): the page's predictor for scripts.

* ``GET /api/info``: the model, its classes and colours, the limits;
* ``POST /api/segment``: an image (a multipart field ``image``, or the raw
  bytes as the body) in, the index mask out as a PNG (pixel value = class id);
  ``?format=json`` returns pixels per class instead, ``?format=uncertainty``
  the Monte-Carlo dropout entropy as a grey PNG (models with dropout).

Refusals are 4xx with ``{"detail": "<why>"}``: 400 undecodable, 413 too many
bytes or pixels, 415 not an image by its content, 503 busy. The body is
counted while it arrives, so an oversized upload is refused without being
stored whole.
"""
from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from imseg.serve.limits import UploadError, read_upload
from imseg.serve.predictor import Busy, Predictor
from imseg.serve.render import class_counts, index_png, png_bytes

FORMATS = ("png", "json", "uncertainty")
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file


async def read_body(request: Request, limit: int, max_upload: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    too_large = UploadError(f"the request is larger than this server takes (uploads up to "
                            f"{max_upload / 2**20:g} MiB)", status=413)
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def upload_bytes(request: Request, limit: int) -> tuple[bytes, str | None]:
    """(the image's bytes, its file name) from a multipart form (field ``image``, else its first file) or a
    raw body (no name)."""
    body = await read_body(request, limit + MULTIPART_OVERHEAD, limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body, None
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def once():
        yield body

    try:
        form = await MultiPartParser(request.headers, once()).parse()
    except MultiPartException as e:
        raise UploadError(f"the multipart form could not be read: {e}") from None
    files = [v for k, v in form.multi_items() if isinstance(v, UploadFile) and k == "image"]
    files = files or [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not files:
        raise UploadError("the form has no file: send the image as the multipart field 'image'", status=422)
    return await files[0].read(), files[0].filename or None


def _refusal(error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=getattr(error, "status", 400))


def _segment_response(predictor: Predictor, data: bytes, name: str | None, output: str) -> Response:
    """Decode, predict and encode (runs in a worker thread: the event loop keeps serving)."""
    image = read_upload(data, predictor.limits, name or "the upload")
    if output == "uncertainty":
        entropy = predictor.uncertainty(image)
        if entropy is None:
            raise UploadError(f"this model ({predictor.meta.name}) has no dropout layers, so there is no Monte-"
                              f"Carlo dropout uncertainty; ask for format=png or json")
        from imseg.engine.predict import uncertainty_image

        return Response(png_bytes(uncertainty_image(entropy, len(predictor.class_names))), media_type="image/png")
    mask = predictor.segment(image)
    if output == "json":
        return JSONResponse({"model": predictor.meta.name, **class_counts(mask, predictor.class_names,
                                                                          predictor.palette)})
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem) if name else "image"
    return Response(index_png(mask, predictor.palette), media_type="image/png",
                    headers={"Content-Disposition": f'inline; filename="{stem}_mask.png"'})


def api_router(predictor: Predictor) -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.get("/info")
    def info() -> dict:
        return predictor.info()

    @router.post("/segment")
    async def segment(request: Request, format: str = "png") -> Response:  # noqa: A002 - the query name
        if format not in FORMATS:
            return _refusal(UploadError(f"format must be one of {', '.join(FORMATS)}, got {format!r}"))
        try:
            with predictor.admit():
                data, name = await upload_bytes(request, predictor.limits.max_bytes)
                # decode, model and encode all on the model's thread: their buffers stay in one malloc arena
                return await run_in_threadpool(predictor.on_model_thread, _segment_response, predictor, data, name,
                                               format)
        except (UploadError, Busy) as e:
            return _refusal(e)

    return router
