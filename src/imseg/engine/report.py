"""The evaluation report a person reads: Markdown, plots and the worst images.

`write_report` puts, beside the eval JSON: ``report.md`` (scores and the
per-class table), ``confusion_matrix.png`` (row-normalised), ``per_class_iou.png``
and ``worst/NN_<name>.png`` panels (image | ground truth | prediction |
errors in red, a legend of the classes in view) for the k images with the lowest mIoU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from imseg.data.palette import colorize


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def plot_confusion(cm: Sequence[Sequence[int]], names: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(cm, dtype=np.float64)
    rows = m / np.maximum(m.sum(1, keepdims=True), 1)  # each row: where that class's pixels went
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(names), 0.8 + 0.5 * len(names)))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted", ylabel="ground truth", title="confusion matrix (row-normalised)")
    for i in range(len(names)):
        for j in range(len(names)):
            if rows[i, j] >= 0.01:
                ax.text(j, i, f"{100 * rows[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_per_class_iou(scores: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores["per_class_iou"])
    values = [100 * (scores["per_class_iou"][n] or 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * len(names), 4))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.axhline(100 * (scores["mIoU"] or 0.0), color="tab:red", ls="--", label=f"mIoU {_pct(scores['mIoU'])}")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set(ylabel="IoU (%)", ylim=(0, 100), title="per-class IoU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def error_panel(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, palette, ignore_index: int,
                title: str) -> Image.Image:
    """image | ground truth | prediction | errors (red: wrong, grey: ignored), side by side."""
    h, w = truth.shape
    wrong = (pred != truth) & (truth != ignore_index)
    errors = (image * 0.35).astype(np.uint8)
    errors[wrong] = (230, 30, 30)
    errors[truth == ignore_index] = (90, 90, 90)
    tiles = [Image.fromarray(image), colorize(truth, palette), colorize(pred, palette), Image.fromarray(errors)]
    panel = Image.new("RGB", (4 * w, h + 18), "white")
    for i, tile in enumerate(tiles):
        panel.paste(tile.convert("RGB"), (i * w, 18))
    ImageDraw.Draw(panel).text((4, 3), title + "   (image | ground truth | prediction | errors)", fill="black")
    return panel


def write_report(scores: dict[str, Any], out_dir: str | Path, *, model=None, dataset=None, inference=None,
                 worst: int = 5) -> Path:
    """Write report.md, the plots and (given model, dataset, inference) the worst-image gallery."""
    import torch

    from imseg.engine.inference import infer_logits
    from imseg.engine.legend import present_classes, with_legend
    from imseg.engine.runtime import model_device
    from imseg.metrics import format_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(scores["per_class_iou"])
    plot_confusion(scores["confusion_matrix"], names, out / "confusion_matrix.png")
    plot_per_class_iou(scores, out / "per_class_iou.png")
    lines = [
        f"# Evaluation: {scores.get('split', '')} split",
        "",
        f"checkpoint `{scores.get('checkpoint', '')}`, {scores.get('images', '?')} images, "
        f"inference {scores.get('inference', {})}",
        "",
        f"**mIoU {_pct(scores['mIoU'])}**, pixel accuracy {_pct(scores['pixel_accuracy'])}, mean class accuracy "
        f"{_pct(scores['mean_class_accuracy'])}, fwIoU {_pct(scores['fwIoU'])}"
        + (f", boundary F1 {_pct(scores.get('mean_bf1'))}" if "mean_bf1" in scores else "")
        + (f", ECE {_pct(scores.get('ece'))}" if "ece" in scores else ""),
        "",
        "```",
        format_table(scores),
        "```",
        "",
        "![per-class IoU](per_class_iou.png)",
        "",
        "![confusion matrix](confusion_matrix.png)",
    ]
    per_image = scores.get("per_image_miou")
    if per_image and model is not None and dataset is not None and inference is not None and worst > 0:
        order = sorted((v, i) for i, v in enumerate(per_image) if v is not None)[:worst]
        (out / "worst").mkdir(exist_ok=True)
        lines += ["", f"## The {len(order)} images with the lowest mIoU", ""]
        device = model_device(model)
        # Colours and names from the model's metadata (a model file carries them), else the data set's.
        palette = getattr(model, "palette", None) or dataset.palette
        class_names = getattr(model, "class_names", None) or list(dataset.class_names)
        model.eval()
        for rank, (value, index) in enumerate(order, 1):
            image, truth = dataset[index]
            with torch.no_grad():
                pred = infer_logits(model, image[None].to(device), inference)[0].argmax(0).cpu().numpy()
            name = Path(dataset.files[index][0]).stem if hasattr(dataset, "files") else str(index)
            panel = error_panel(image.permute(1, 2, 0).numpy(), truth.numpy(), pred, palette,
                                dataset.ignore_index, f"{name}: mIoU {_pct(value)}")
            panel = with_legend(panel, class_names, palette, present_classes([truth.numpy(), pred], len(class_names)))
            file = out / "worst" / f"{rank:02d}_{name}.png"
            panel.save(file)
            lines += [f"{rank}. `{name}`: mIoU {_pct(value)}", "", f"   ![{name}](worst/{file.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
