"""`imseg serve` in a real browser: headless Chromium driven by Playwright, against the real command.

Uploads a CamVid picture, waits for the overlay, unticks a class and sees its
colour leave the overlay, downloads the mask and compares it with `imseg
predict`'s, then uploads a decompression bomb and sees the error in the page.
Screenshots of every step are kept in test-artifacts/serve/ (gitignored),
with the server's output (server.log).

Needs Chromium (Debian: ``apt-get install chromium``; .ci/run installs it) and
the ``playwright`` package (the ``[test]`` extra). Playwright cannot download
its own browser here, so it drives the system's. Without either the test is
skipped, except on CI (CI=true), where it fails.
"""
from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_cli
from tests.serve_support import ARTIFACTS, bomb_png, free_port, start_server, wait_until_up, write_tiny_checkpoint

pytestmark = pytest.mark.timeout(240)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser_or_skip() -> str:
    """The Chromium executable; a skip (a failure on CI) naming what is missing."""
    from imseg.serve import missing_extra

    problem = missing_extra()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = problem or "playwright is not installed (it is in the [test] extra: make install)"
    executable = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if executable is None:
        problem = problem or "no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test must run on CI: {problem}")
        pytest.skip(problem)
    return executable


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, checkpoint): `imseg serve` on a free loopback port, one thread (as the reference predict)."""
    chromium = _browser_or_skip()
    checkpoint = write_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.pt")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log, port = ARTIFACTS / "server.log", free_port()
    proc = start_server(checkpoint, port, "--threads", "1", "--device", "cpu", "--mc-samples", "2",
                        "--max-megapixels", "1", log=log)
    try:
        wait_until_up(proc, port, timeout=90, log=log)
        yield f"http://127.0.0.1:{port}", checkpoint, chromium
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:
            proc.kill()


def _predict_mask(checkpoint, image, out) -> np.ndarray:
    """`imseg predict`'s mask, with one thread as the server runs (the same kernels, the same float sums)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, _, err = run_cli("predict", checkpoint, image, "--out", out, "--device", "cpu")
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    return np.asarray(Image.open(out / f"{image.stem}.png"))


def _overlay_pixels(page) -> tuple[str, np.ndarray]:
    src = page.get_attribute("#overlay img", "src")
    shown = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
    return src, shown[:360]  # the 360 x 480 picture; imseg's legend strip is below it


def test_upload_toggle_download_and_bomb_in_a_browser(served, camvid_root, tmp_path):
    from playwright.sync_api import sync_playwright

    url, checkpoint, chromium = served
    image = sorted((camvid_root / "test").glob("*.png"))[0]
    expected = _predict_mask(checkpoint, image, tmp_path)
    picture = np.asarray(Image.open(image).convert("RGB"))
    k = int(np.bincount(expected.ravel()).argmax())  # the class with the most pixels
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000}, accept_downloads=True)
        page.goto(url + "/")
        page.set_input_files("#upload input[type=file]", str(image))
        page.wait_for_selector("#overlay img", timeout=60_000)
        page.wait_for_selector("#uncertainty img", timeout=60_000)
        page.screenshot(path=ARTIFACTS / "1-overlay.png", full_page=True)
        before_src, before = _overlay_pixels(page)
        assert before.shape == picture.shape
        assert not np.array_equal(before[expected == k], picture[expected == k])  # class k is coloured

        name = page.locator("#classes label").nth(k)
        name.click()  # untick class k
        page.wait_for_function("s => document.querySelector('#overlay img').src !== s", arg=before_src,
                               timeout=30_000)
        page.screenshot(path=ARTIFACTS / "2-class-off.png", full_page=True)
        _, after = _overlay_pixels(page)
        assert np.array_equal(after[expected == k], picture[expected == k])  # its colour is gone
        assert np.array_equal(after[expected != k], before[expected != k])  # the others are as they were

        with page.expect_download(timeout=30_000) as download:
            page.click("#download")
        assert download.value.suggested_filename == f"{image.stem}_mask.png"
        saved = tmp_path / "downloaded.png"
        download.value.save_as(saved)
        assert np.array_equal(np.asarray(Image.open(saved)), expected)  # the mask `imseg predict` writes

        bomb = tmp_path / "holiday.png"
        bomb.write_bytes(bomb_png(30000, 30000))
        page.click("#upload button[aria-label='Clear']")
        page.set_input_files("#upload input[type=file]", str(bomb))
        toast = page.locator("[data-testid='toast-text']", has_text="decompression bomb")
        toast.wait_for(timeout=30_000)  # the error message, shown in the page
        assert "holiday.png declares 900.0 megapixels" in toast.inner_text()
        page.wait_for_timeout(800)  # the message slides in: let the screenshot show it
        page.screenshot(path=ARTIFACTS / "3-bomb-refused.png")
        browser.close()
    info = __import__("json").loads(__import__("urllib.request").request.urlopen(url + "/api/info").read())
    assert info["model"] == "unet_original"  # the server survived the bomb
