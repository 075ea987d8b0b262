"""`imseg serve`'s HTTP API and its limits, in this process (FastAPI's TestClient, no socket, no browser).

The page's own behaviour in a real browser is tests/test_serve_browser.py.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_cli
from tests.serve_support import bomb_png, write_tiny_checkpoint


def _require_serve_extra() -> None:
    from imseg.serve import missing_extra

    missing = missing_extra()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the serve extra is required on CI (make install installs it): {missing}")
        pytest.skip(missing)


MAX_BYTES = 400_000  # a CamVid PNG (about 220 kB) fits, a 1000 x 1000 noise PNG does not
MAX_PIXELS = 200_000  # 360 x 480 = 172800 fits


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.pt")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    _require_serve_extra()
    from imseg.serve.limits import Limits
    from imseg.serve.predictor import load_predictor

    return load_predictor(checkpoint, Limits(max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, queue=2), device="cpu",
                          mc_samples=2)


@pytest.fixture(scope="module")
def client(predictor, tmp_path_factory):
    from fastapi.testclient import TestClient

    from imseg.serve.server import build_app

    with TestClient(build_app(predictor, tmp_path_factory.mktemp("masks"))) as c:
        yield c


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small_image() -> bytes:
    rng = np.random.default_rng(0)
    return _png(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


def _post(client, data: bytes, name: str = "image.png", query: str = ""):
    return client.post(f"/api/segment{query}", files={"image": (name, data, "application/octet-stream")})


def test_mask_png_equals_imseg_predict(client, checkpoint, camvid_root, tmp_path):
    image = sorted((camvid_root / "test").glob("*.png"))[0]
    response = _post(client, image.read_bytes(), image.name)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert f'filename="{image.stem}_mask.png"' in response.headers["content-disposition"]
    served = Image.open(io.BytesIO(response.content))
    code, _, err = run_cli("predict", checkpoint, image, "--out", tmp_path, "--device", "cpu")
    assert code == 0, err
    written = Image.open(tmp_path / f"{image.stem}.png")
    assert served.mode == written.mode == "P"
    assert np.array_equal(np.asarray(served), np.asarray(written))
    assert served.getpalette()[:33] == written.getpalette()[:33]
    # the raw body (no multipart form) gives the same mask
    raw = client.post("/api/segment", content=image.read_bytes(), headers={"content-type": "image/png"})
    assert raw.status_code == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(raw.content))),
                                                     np.asarray(written))


def test_counts_json_sum_to_the_pixel_count(client, small_image, predictor):
    response = _post(client, small_image, query="?format=json")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"], body["pixels"]) == (64, 48, 64 * 48)
    assert [c["name"] for c in body["classes"]] == list(predictor.class_names)
    assert sum(c["pixels"] for c in body["classes"]) == 64 * 48
    assert abs(sum(c["fraction"] for c in body["classes"]) - 1) < 1e-4
    mask = np.asarray(Image.open(io.BytesIO(_post(client, small_image).content)))
    assert [c["pixels"] for c in body["classes"]] == np.bincount(mask.ravel(), minlength=11).tolist()


def test_the_model_runs_on_one_thread_whoever_calls_it(predictor, small_image, monkeypatch):
    """Memory stays flat only so: glibc keeps freed activation buffers in a malloc arena per calling thread, and
    a model run from the web server's worker pool held one set of them per worker (serve-load.json grew
    997 -> 1713 MiB over 200 requests before the model got its own thread)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import imseg.engine.predict as predict_module

    callers, real = set(), predict_module.predict

    def recording(*args, **kwargs):
        callers.add(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_module, "predict", recording)
    image = Image.open(io.BytesIO(small_image))
    with ThreadPoolExecutor(4) as pool:
        masks = list(pool.map(lambda _: predictor.segment(image), range(8)))
    assert len(callers) == 1 and threading.get_ident() not in callers, callers
    assert all(np.array_equal(m, masks[0]) for m in masks)


def test_uncertainty_is_a_grey_png_of_the_image_size(client, small_image):
    response = _post(client, small_image, query="?format=uncertainty")
    assert response.status_code == 200, response.text
    picture = Image.open(io.BytesIO(response.content))
    assert (picture.mode, picture.size) == ("L", (64, 48))


def test_info_names_the_model_classes_and_limits(client, predictor):
    info = client.get("/api/info").json()
    assert info["model"] == "unet_original" and info["backend"] == "torch"
    assert [c["name"] for c in info["classes"]] == list(predictor.class_names)
    assert info["limits"] == {"max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS, "queue": 2}
    assert info["uncertainty"] == {"mc_dropout_samples": 2}


def test_a_file_that_is_not_an_image_is_415_whatever_its_name(client):
    response = _post(client, b"just some text, named like a picture", "photo.png")
    assert response.status_code == 415
    assert "not an image" in response.json()["detail"]


def test_a_damaged_image_is_400(client, small_image):
    response = _post(client, small_image[: len(small_image) // 2])
    assert response.status_code == 400
    assert "truncated" in response.json()["detail"] or "damaged" in response.json()["detail"]


def test_a_too_large_upload_is_413_before_it_is_read_whole(client):
    noise = _png(np.random.default_rng(1).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    assert len(noise) > MAX_BYTES
    response = _post(client, noise)
    assert response.status_code == 413
    assert "MiB" in response.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        for start in range(0, len(noise), 65536):
            yield noise[start:start + 65536]

    chunked = client.post("/api/segment", content=chunks(), headers={"content-type": "image/png"})
    assert chunked.status_code == 413


def test_a_decompression_bomb_is_413_not_an_out_of_memory(client):
    bomb = bomb_png(30000, 30000)  # a few hundred bytes that declare 900 megapixels
    assert len(bomb) < 2000
    response = _post(client, bomb, "bomb.png")
    assert response.status_code == 413
    assert "decompression bomb" in response.json()["detail"] and "900.0 megapixels" in response.json()["detail"]
    # just over the server's own limit (below PIL's): refused from the header, naming the size
    response = _post(client, bomb_png(600, 400), "big.png")
    assert response.status_code == 413 and "600 x 400" in response.json()["detail"]


def test_a_full_queue_is_503_and_frees_again(client, predictor, small_image):
    with predictor.admit(), predictor.admit():  # queue=2: both places taken
        response = _post(client, small_image)
    assert response.status_code == 503 and "busy" in response.json()["detail"]
    assert _post(client, small_image).status_code == 200


def test_unknown_format_and_missing_file_are_4xx(client, small_image):
    assert _post(client, small_image, query="?format=jpeg").status_code == 400
    response = client.post("/api/segment", data={"note": "no file"})
    assert response.status_code in (400, 415, 422)


def test_the_page_shows_refusals_as_errors(predictor, tmp_path, small_image):
    import gradio as gr

    from imseg.serve.app import PageActions

    actions = PageActions(predictor, tmp_path)
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    with pytest.raises(gr.Error, match="decompression bomb"):
        actions.segment(str(tmp_path / "bomb.png"), 0.5, [0, 1])
    (tmp_path / "photo.png").write_bytes(small_image)
    state, overlay, legend, download = actions.segment(str(tmp_path / "photo.png"), 0.5, list(range(11)))
    assert overlay.size[0] == 64 and overlay.size[1] > 48 and "legend-row" in legend  # the legend strip below
    saved = download.value["path"] if isinstance(download.value, dict) else download.value  # gradio's FileData
    assert Path(saved).name == "photo_mask.png"
    assert np.array_equal(np.asarray(Image.open(saved)), state["mask"])


def test_toggling_a_class_off_leaves_its_pixels_plain(predictor, tmp_path, small_image):
    from imseg.serve.app import PageActions

    actions = PageActions(predictor, tmp_path)
    (tmp_path / "photo.png").write_bytes(small_image)
    everything = list(range(11))
    state, shown_all, _, _ = actions.segment(str(tmp_path / "photo.png"), 0.6, everything)
    mask, picture = state["mask"], np.asarray(state["image"])
    k = int(np.bincount(mask.ravel()).argmax())
    without_k, legend = actions.redraw(state, 0.6, [c for c in everything if c != k])
    without_k, shown_all = np.asarray(without_k)[:48], np.asarray(shown_all)[:48]  # the picture above its legend
    assert np.array_equal(without_k[mask == k], picture[mask == k])
    assert not np.array_equal(shown_all[mask == k], picture[mask == k])
    assert np.array_equal(without_k[mask != k], shown_all[mask != k])
    assert legend.count("line-through") == 1


def test_guard_pil_makes_pil_refuse_bombs_everywhere(monkeypatch):
    from imseg.serve.limits import Limits, guard_pil

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    with warnings.catch_warnings():
        guard_pil(Limits(max_pixels=1000))
        assert Image.MAX_IMAGE_PIXELS == 1000
        with pytest.raises(Image.DecompressionBombError):
            Image.open(io.BytesIO(bomb_png(100, 100)))


def test_missing_extra_is_one_line_naming_the_pip_command(monkeypatch, checkpoint):
    import imseg.serve

    monkeypatch.setattr(imseg.serve, "EXTRA_MODULES", ("gradio", "no_such_module_for_imseg_tests"))
    code, out, err = run_cli("serve", checkpoint)
    assert code == 2
    assert err.strip().count("\n") == 0 and "pip install 'imseg[serve]'" in err


def test_an_exported_onnx_file_is_served_through_open_backend(checkpoint, tmp_path, small_image, client):
    """`imseg serve model.onnx`: the file runs in onnxruntime (imseg.deploy.open_backend) behind the same API,
    with the metadata stored in the file; no dropout there, so no uncertainty map."""
    pytest.importorskip("onnxruntime")
    from fastapi.testclient import TestClient

    from imseg.engine.checkpoint import load_model
    from imseg.engine.export import export_onnx
    from imseg.serve.limits import Limits
    from imseg.serve.predictor import load_predictor
    from imseg.serve.server import build_app

    onnx = tmp_path / "tiny.onnx"
    export_onnx(load_model(checkpoint), onnx, (64, 96), dynamic=True, check=False)
    predictor = load_predictor(onnx, Limits(max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS))
    assert (predictor.backend, predictor.mc_samples) == ("onnxruntime", 0)
    with TestClient(build_app(predictor, tmp_path / "masks")) as onnx_client:
        info = onnx_client.get("/api/info").json()
        assert info["backend"] == "onnxruntime" and info["uncertainty"] is None
        served = np.asarray(Image.open(io.BytesIO(_post(onnx_client, small_image).content)))
        assert _post(onnx_client, small_image, query="?format=uncertainty").status_code == 400
    eager = np.asarray(Image.open(io.BytesIO(_post(client, small_image).content)))
    assert served.shape == eager.shape and (served == eager).mean() > 0.99  # float rounding may flip a tie
