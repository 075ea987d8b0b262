"""What `imseg check-data` concludes from a `Survey`, and the files it writes (report.md, a chart, JSON)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .doctor import Survey


def _median_frequency(pixels: dict[int, int], image_pixels: dict[int, int]) -> dict[int, float]:
    freq = {c: pixels[c] / image_pixels[c] for c in pixels if image_pixels.get(c)}
    if not freq:
        return {}
    median = float(np.median(list(freq.values())))
    return {c: round(median / f, 4) for c, f in sorted(freq.items())}


def _reduce_zero_guess(survey: Survey, num_classes: int | None, dataset: Any) -> tuple[bool | None, str]:
    values = [v for v in survey.value_pixels if v != 255]
    if survey.colour_masks or not values:
        return None, "no index masks to judge"
    if dataset is not None and (dataset.label_map or dataset.reduce_zero_label):
        how = "reduce_zero_label" if dataset.reduce_zero_label else f"its label map {dataset.label_map}"
        return dataset.reduce_zero_label, f"the dataset decodes the raw values already, with {how}"
    top, images = max(values), sum(survey.encodings.values())
    share = survey.value_images.get(0, 0) / max(images, 1)
    if num_classes and 0 in survey.value_pixels and top == num_classes:
        return True, (f"values span 0..{top} for {num_classes} classes: 0 is probably 'unlabelled' and k class "
                      f"k-1 (the ADE20K convention); set data.reduce_zero_label: true")
    if num_classes and top < num_classes:
        return False, f"values 0..{top} fit the {num_classes} classes as they are"
    return None, f"value 0 is in {100 * share:.0f}% of the masks; with the class count known this can be judged"


def conclusions(survey: Survey, datasets: dict[str, Any]) -> dict[str, Any]:
    """The suggestions: num_classes, ignore_index, reduce_zero_label, class weights, band statistics."""
    ds = next(iter(datasets.values()), None)
    num_classes = ds.num_classes if ds is not None else None
    if ds is not None:
        weights = _median_frequency(survey.label_pixels, survey.label_image_pixels)
        suggested = num_classes
    elif survey.colour_masks:
        weights, suggested = {}, len(survey.value_pixels)
    else:
        labelled = {v: n for v, n in survey.value_pixels.items() if v != 255}
        weights = {}
        suggested = max(labelled) + 1 if labelled else None
    guess, reason = _reduce_zero_guess(survey, num_classes, ds)
    mean = std = None
    if survey.band_n:
        mean = survey.band_sum / survey.band_n
        std = np.sqrt(np.maximum(survey.band_sq / survey.band_n - mean * mean, 0))
    return {
        "num_classes": suggested,
        "ignore_index": ds.ignore_index if ds is not None else (255 if 255 in survey.value_pixels else None),
        "reduce_zero_label": guess, "reduce_zero_label_reason": reason,
        "class_weights_median_frequency": weights,
        "band_mean": None if mean is None else [round(float(m), 3) for m in mean],
        "band_std": None if std is None else [round(float(s), 3) for s in std],
    }


def _value_rows(survey: Survey, names: Sequence[str] | None) -> list[tuple[str, int, float, int]]:
    total = sum(survey.value_pixels.values()) or 1
    rows = []
    for value, pixels in sorted(survey.value_pixels.items()):
        label = (f"({value >> 16}, {(value >> 8) & 255}, {value & 255})" if survey.colour_masks else str(value))
        if names is not None and not survey.colour_masks and 0 <= value < len(names):
            label += f" {names[value]}"
        rows.append((label, pixels, 100 * pixels / total, survey.value_images[value]))
    return rows


def _chart(rows: list[tuple[str, int, float, int]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.28 * len(rows))))
    ax.barh([r[0] for r in rows][::-1], [r[2] for r in rows][::-1], color="#4477aa")
    ax.set(xlabel="share of mask pixels (%)", title="label values in the masks")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_outputs(survey: Survey, found: dict[str, Any], out: Path, target: str,
                  names: Sequence[str] | None, seconds: float) -> Path:
    """report.md, class_share.png and check-data.json in ``out``; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    rows = _value_rows(survey, names)
    _chart(rows[:60], out / "class_share.png")
    record = {"target": target, "seconds": round(seconds, 2), "splits": survey.splits,
              "mask_encodings": dict(survey.encodings), "image_modes": dict(survey.image_modes),
              "errors": survey.errors, "warnings": survey.warnings, "suggestions": found,
              "values": [{"value": r[0], "pixels": r[1], "share_percent": round(r[2], 4), "images": r[3]}
                         for r in rows]}
    (out / "check-data.json").write_text(json.dumps(record, indent=2))
    lines = [f"# check-data: {target}", "", f"{sum(survey.splits.values())} image/mask pairs "
             f"({', '.join(f'{k} {v}' for k, v in survey.splits.items())}), read in {seconds:.1f} s.", "",
             f"Mask encodings: {dict(survey.encodings)}. Image modes: {dict(survey.image_modes)}.", "",
             f"## Errors ({len(survey.errors)})", ""] + [f"- {e}" for e in survey.errors] + [
             "", f"## Warnings ({len(survey.warnings)})", ""] + [f"- {w}" for w in survey.warnings] + [
             "", "## Suggestions", ""] + [f"- `{k}`: {v}" for k, v in found.items()] + [
             "", "## Label values", "", "![class share](class_share.png)", "",
             "| value | pixels | share % | images |", "|---|---|---|---|"] + [
             f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]} |" for r in rows]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def check_data(target: str | Path, *, image_dir: str = "images", mask_dir: str = "masks", mask_prefix: str = "",
               mask_suffix: str = "", out: str | Path = "check-data-report",
               write_classes: str | Path | None = None) -> tuple[Path, Survey, dict[str, Any]]:
    """Survey ``target`` (a config file, or a folder of images and masks) and write the report."""
    import time

    from .doctor import colour_table_from, pairs_from_config, pairs_from_folder, survey_pairs

    start = time.perf_counter()
    target = Path(target)
    setup_errors: list[str] = []
    if target.is_file():
        pairs, datasets, _ = pairs_from_config(target, setup_errors)
        scan_findings = Survey()
    else:
        scan_findings, datasets = Survey(), {}
        pairs = pairs_from_folder(target, image_dir, mask_dir, mask_prefix, mask_suffix, scan_findings)
    survey = survey_pairs(pairs, datasets)
    survey.errors[:0] = setup_errors + scan_findings.errors
    survey.warnings[:0] = scan_findings.warnings
    found = conclusions(survey, datasets)
    names = next(iter(datasets.values())).class_names if datasets else None
    report = write_outputs(survey, found, Path(out), str(target), names, time.perf_counter() - start)
    if write_classes is not None:
        found["classes_written"] = str(colour_table_from(survey, Path(write_classes)))
    return report, survey, found
