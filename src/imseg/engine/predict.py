"""Prediction on images a user hands over: files, folders, PIL images, arrays."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from imseg.data.base import DataError, load_image
from imseg.data.palette import overlay
from imseg.engine.inference import Inference, infer_logits, inference_from_config
from imseg.engine.legend import present_classes, with_legend
from imseg.engine.runtime import model_device

ImageLike = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def _to_tensor(image: ImageLike, channels: int) -> torch.Tensor:
    """A ``[C,H,W]`` tensor of 0-255 values in RGB order."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        try:
            image = load_image(path)  # upright, 8-bit as RGB, deeper data with its values: as training read it
        except DataError as e:
            raise ValueError(str(e)) from None
        if channels == 1 and image.shape[-1] == 3 and image.dtype == np.uint8:
            image = np.asarray(Image.fromarray(image).convert("L"))
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB" if channels == 3 else "L") if channels in (1, 3) else image)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3:
            raise ValueError(f"expected an H x W x C image array, got shape {image.shape}")
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a writable copy
    elif isinstance(image, torch.Tensor):
        tensor = image if image.ndim == 3 else image.unsqueeze(0)
    else:
        raise TypeError(f"cannot predict on {type(image).__name__}; give a path, PIL image, numpy array or tensor")
    if tensor.shape[0] != channels:
        raise ValueError(f"image has {tensor.shape[0]} channels but the model expects {channels}")
    return tensor


def model_inference(model: nn.Module, **overrides) -> Inference:
    """The inference settings a model was trained with (from its checkpoint), with overrides.

    ``overrides`` are EvalConfig keys (mode, crop_size, stride, window_batch,
    scales, flip) and ``eval_size``; None values are ignored.
    """
    settings = {**getattr(model, "eval_settings", {}), **{k: v for k, v in overrides.items() if v is not None}}
    eval_size = settings.pop("eval_size", None) or getattr(model, "eval_size", None)
    return inference_from_config(settings, model.preprocessing, eval_size)


@torch.no_grad()
def predict_logits(model: nn.Module, image: ImageLike, inference: Inference | None = None) -> torch.Tensor:
    """Float logits ``[K,H,W]`` for one image, at the image's own size."""
    device = model_device(model)
    inference = inference or model_inference(model)
    tensor = _to_tensor(image, inference.preprocessing.num_channels).to(device)
    was_training = model.training
    model.eval()
    logits = infer_logits(model, tensor.unsqueeze(0), inference)[0]
    model.train(was_training)
    return logits


def predict(model: nn.Module, image: ImageLike, inference: Inference | None = None) -> np.ndarray:
    """The class index of every pixel (``uint8`` or ``int64`` array ``[H,W]``).

    ``model`` comes from `imseg.load_model` (it carries its preprocessing and
    inference settings) or is any imseg model with ``model.preprocessing``.
    """
    mask = predict_logits(model, image, inference).argmax(0).cpu().numpy()
    return mask.astype(np.uint8) if mask.max(initial=0) < 256 else mask


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the image files inside each folder (sorted)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    return files


def mask_image(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """An index image (mode 'P'): pixel values are class ids, the palette shows colours."""
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [v for colour in palette for v in colour]
    im.putpalette(flat + [0] * (768 - len(flat)))
    return im


def save_mask(mask: np.ndarray, palette: Sequence[Sequence[int]], path: Path) -> None:
    """An index PNG (mode 'P'): pixel values are class ids, the palette shows colours."""
    mask_image(mask, palette).save(path)


@torch.no_grad()
def predict_uncertainty(model: nn.Module, image: ImageLike, samples: int,
                        inference: Inference | None = None, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Monte-Carlo dropout: (mask from the mean probabilities, predictive entropy in nats), both ``[H,W]``.

    Works for any model with dropout layers (Bayesian SegNet first); BatchNorm
    stays in eval mode, only dropout samples.
    """
    import torch.nn.functional as F

    from imseg.uncertainty import mc_dropout_predict

    inference = inference or model_inference(model)
    device = model_device(model)
    tensor = _to_tensor(image, inference.preprocessing.num_channels).to(device)
    h, w = tensor.shape[-2:]
    x = inference.preprocessing(tensor.unsqueeze(0))
    if inference.eval_size is not None:
        x = F.interpolate(x, size=inference.eval_size, mode="bilinear", align_corners=False)
    probs, entropy = mc_dropout_predict(model, x, samples, uncertainty="entropy", seed=seed)
    probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)[0]
    entropy = F.interpolate(entropy[:, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return probs.argmax(0).cpu().numpy().astype(np.uint8), entropy.cpu().numpy()


def uncertainty_image(entropy: np.ndarray, num_classes: int) -> Image.Image:
    """Entropy as an 8-bit grey image: black = certain, white = log(K) (uniform over classes)."""
    scaled = np.clip(entropy / np.log(max(2, num_classes)), 0, 1) * 255
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


def save_uncertainty(entropy: np.ndarray, num_classes: int, path: Path) -> None:
    """Entropy as an 8-bit grey PNG: black = certain, white = log(K) (uniform over classes)."""
    uncertainty_image(entropy, num_classes).save(path)


def predict_files(model: nn.Module, inputs: Iterable[str | Path], out_dir: str | Path, alpha: float = 0.5,
                  inference: Inference | None = None, mc_samples: int = 0,
                  failures: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Write ``<stem>.png`` (index mask) and ``<stem>_overlay.png`` (with a legend of the classes it shows,
    names and colours from the model's metadata) for every input image.

    With ``mc_samples`` > 0 the mask comes from Monte-Carlo dropout's mean
    probabilities and ``<stem>_entropy.png`` shows the per-pixel uncertainty.
    An image that cannot be read raises, unless ``failures`` is a list: then
    it is appended there as (path, reason) and the other images go on.
    """
    inputs = list(inputs)
    out = Path(out_dir)
    plan = output_names(inputs, out)  # refuses before anything is written
    out.mkdir(parents=True, exist_ok=True)
    palette = model.palette
    names = getattr(model, "class_names", None) or [f"class_{i}" for i in range(len(palette))]
    written = []
    for path, stem in plan:
        try:
            rgb = _read_rgb(path)
        except OSError as error:  # unreadable, truncated, not an image (PIL's errors are OSErrors)
            if failures is None:
                raise
            failures.append((path, f"{type(error).__name__}: {error}"))
            continue
        if mc_samples > 0:
            mask, entropy = predict_uncertainty(model, path, mc_samples, inference)
            save_uncertainty(entropy, len(palette), out / f"{stem}_entropy.png")
        else:
            mask = predict(model, path, inference)
        save_mask(mask, palette, out / f"{stem}.png")
        drawn = with_legend(overlay(rgb, mask, palette, alpha), names, palette, present_classes([mask], len(names)))
        drawn.save(out / f"{stem}_overlay.png")
        written.append(out / f"{stem}.png")
    return written


def _read_rgb(path: Path) -> Image.Image:
    """The picture to draw the overlay on: 8-bit RGB as it is; other data (16-bit, multi-band) from its first
    three bands (or its one band), each stretched between its 2nd and 98th percentile."""
    try:
        image = load_image(path)  # decodes now: a bad file fails here, before anything is written for it
    except DataError as e:
        raise OSError(str(e)) from None
    if image.dtype == np.uint8 and image.shape[-1] == 3:
        return Image.fromarray(image)
    bands = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, -1)
    low, high = np.percentile(bands, 2, axis=(0, 1)), np.percentile(bands, 98, axis=(0, 1))
    stretched = (bands.astype(np.float32) - low) / np.maximum(high - low, 1e-6)
    return Image.fromarray((np.clip(stretched, 0, 1) * 255).astype(np.uint8))


OUTPUT_SUFFIXES = ("", "_overlay", "_entropy")


def output_names(inputs: Iterable[str | Path], out_dir: Path) -> list[tuple[Path, str]]:
    """Each input image with the stem its outputs get in ``out_dir``: never an input, never shared.

    Inputs with the same stem and different extensions (``m0.jpg``, ``m0.png``)
    keep the extension in the stem (``m0_jpg``, ``m0_png``); the same file name
    from two folders, an output folder that is an input folder, or an output
    that would replace an input file is refused naming the files.
    """
    given = [Path(p) for p in inputs]
    out_dir = Path(out_dir)
    for folder in (p for p in given if p.is_dir()):
        if folder.resolve() == out_dir.resolve():
            raise ValueError(f"the output folder {out_dir} is an input folder: the masks would mix with the images "
                             "(and be read as inputs next time); choose another --out")
    files = expand_inputs(given)
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path)
    plan, owner = [], {}
    for path in files:
        clash = len(by_stem[path.stem]) > 1
        stem = f"{path.stem}_{path.suffix.lstrip('.').lower()}" if clash else path.stem
        if stem in owner:
            raise ValueError(f"inputs {owner[stem]} and {path} would both write {out_dir / stem}.png; "
                             "predict them into separate --out folders")
        owner[stem] = path
        plan.append((path, stem))
    inputs_resolved = {p.resolve() for p in files}
    for path, stem in plan:
        for suffix in OUTPUT_SUFFIXES:
            target = out_dir / f"{stem}{suffix}.png"
            if target.resolve() in inputs_resolved:
                raise ValueError(f"writing {target} would overwrite the input image {target}; choose another --out")
    return plan
