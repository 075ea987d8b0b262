"""The Gradio page of `imseg serve`: upload or pick a picture, see the overlay, toggle classes, download the mask.

The model runs once per picture (and once more for the uncertainty map of a
model with dropout); the opacity slider and the class toggles redraw from
the stored mask without it. Every refusal (too large, not an image, a
decompression bomb, busy) is shown in the page as an error message.
"""
from __future__ import annotations

import html
import shutil
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import gradio as gr
import numpy as np
from PIL import Image

from imseg.serve.limits import UploadError, read_upload_file
from imseg.serve.predictor import Busy, Predictor
from imseg.serve.render import LEGEND_CSS, legend_html, overlay_with_legend

MASK_FILES_KEPT_S = 3600  # mask downloads older than this are removed when a new one is written


def page_css(palette: Sequence[Sequence[int]]) -> str:
    """The legend's style, and each class toggle marked with its class colour."""
    marks = "\n".join(f"#classes label:nth-of-type({i + 1}) {{ border-left: 0.8em solid rgb({r},{g},{b}); }}"
                      for i, (r, g, b) in enumerate(palette))
    return LEGEND_CSS + marks


def _write_mask(workdir: Path, stem: str, mask: np.ndarray, palette) -> Path:
    """``<stem>_mask.png`` in a folder of its own (the download keeps the name); old ones pruned."""
    from imseg.serve.render import index_png

    now = time.time()
    for old in workdir.iterdir():
        if old.is_dir() and now - old.stat().st_mtime > MASK_FILES_KEPT_S:
            shutil.rmtree(old, ignore_errors=True)
    folder = workdir / uuid.uuid4().hex
    folder.mkdir()
    path = folder / f"{stem}_mask.png"
    path.write_bytes(index_png(mask, palette))
    return path


def _shown_error(error: Exception) -> gr.Error:
    return gr.Error(html.escape(str(error)), duration=30, print_exception=False)


class PageActions:
    """What the page's events do; one instance per server, state per browser tab in ``gr.State``."""

    def __init__(self, predictor: Predictor, workdir: Path) -> None:
        self.predictor, self.workdir = predictor, workdir

    def segment(self, path: str | None, alpha: float, shown: list[int]):
        """A new picture: (state, overlay, legend, download button)."""
        p = self.predictor
        if not path:
            return None, None, legend_html(p.class_names, p.palette), gr.DownloadButton(value=None, interactive=False)
        try:
            with p.admit():
                image = read_upload_file(path, p.limits)
                mask = p.segment(image)
        except (UploadError, Busy) as e:
            raise _shown_error(e) from None
        download = _write_mask(self.workdir, Path(path).stem, mask, p.palette)
        state = {"image": image, "mask": mask}
        overlay, legend = self.redraw(state, alpha, shown)
        return state, overlay, legend, gr.DownloadButton(value=str(download), interactive=True)

    def redraw(self, state: dict | None, alpha: float, shown: list[int]):
        """The opacity or the classes shown changed: (overlay, legend), no model run."""
        p = self.predictor
        if state is None:
            return None, legend_html(p.class_names, p.palette, None, shown)
        return (overlay_with_legend(state["image"], state["mask"], p.class_names, p.palette, alpha, shown),
                legend_html(p.class_names, p.palette, state["mask"], shown))

    def uncertainty(self, state: dict | None) -> Image.Image | None:
        from imseg.engine.predict import uncertainty_image

        if state is None:
            return None
        try:
            with self.predictor.admit():
                entropy = self.predictor.uncertainty(state["image"])
        except Busy as e:
            raise _shown_error(e) from None
        return None if entropy is None else uncertainty_image(entropy, len(self.predictor.class_names))


def _header(p: Predictor) -> str:
    about = f"**{html.escape(p.meta.name)}**, {len(p.class_names)} classes, run by {p.backend}"
    return (f"# imseg: semantic segmentation\n{about}. Upload a picture or pick a sample; the mask is computed "
            f"once, the opacity and the classes shown redraw it. Limits: {p.limits.describe()}. "
            f"The same model answers `POST /api/segment` (see `/api/info`).")


def _layout(p: Predictor, samples: Sequence[Path]) -> SimpleNamespace:
    names = p.class_names
    ui = SimpleNamespace(state=gr.State(None))
    gr.Markdown(_header(p))
    with gr.Row():
        with gr.Column(scale=1):
            ui.upload = gr.File(label="Image (PNG, JPEG, BMP, TIFF, WebP, GIF)", type="filepath", elem_id="upload")
            if samples:
                gr.Examples([[str(s)] for s in samples], inputs=[ui.upload], label="Samples")
            ui.alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity")
            ui.shown = gr.CheckboxGroup([(n, i) for i, n in enumerate(names)], value=list(range(len(names))),
                                        label="Classes shown (untick to leave a class out of the overlay)",
                                        elem_id="classes")
            ui.legend = gr.HTML(legend_html(names, p.palette), label="Legend", elem_id="legend")
        with gr.Column(scale=2):
            ui.overlay = gr.Image(label="Overlay", type="pil", format="png", interactive=False, elem_id="overlay")
            ui.download = gr.DownloadButton("Download the mask (index PNG: pixel value = class id)",
                                            interactive=False, elem_id="download")
            ui.uncertainty = gr.Image(
                label=f"Uncertainty: predictive entropy of {p.mc_samples} Monte-Carlo dropout passes "
                      f"(black certain, white uniform over the classes)",
                type="pil", format="png", interactive=False, visible=p.mc_samples > 0, elem_id="uncertainty")
    return ui


def build_page(predictor: Predictor, workdir: Path, samples: Sequence[Path] = ()) -> gr.Blocks:
    """The page as a `gr.Blocks` (not yet served: `imseg.serve.server` mounts it beside the API)."""
    actions = PageActions(predictor, workdir)
    with gr.Blocks(title=f"imseg: {predictor.meta.name}", analytics_enabled=False,
                   delete_cache=(MASK_FILES_KEPT_S, MASK_FILES_KEPT_S)) as page:
        ui = _layout(predictor, samples)
        segmented = ui.upload.change(actions.segment, [ui.upload, ui.alpha, ui.shown],
                                     [ui.state, ui.overlay, ui.legend, ui.download], concurrency_id="model",
                                     concurrency_limit=1, show_progress_on=[ui.overlay])
        if predictor.mc_samples > 0:  # after the overlay is shown, and only for a picture that was segmented
            segmented.success(actions.uncertainty, [ui.state], [ui.uncertainty], concurrency_id="model",
                           concurrency_limit=1)
        for control in (ui.alpha, ui.shown):  # cheap redraws: no model, no queue slot for the model
            control.change(actions.redraw, [ui.state, ui.alpha, ui.shown], [ui.overlay, ui.legend],
                           concurrency_limit=None, trigger_mode="always_last", show_progress="hidden")
    page.queue(max_size=predictor.limits.queue, default_concurrency_limit=1)
    return page
