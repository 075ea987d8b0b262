"""Typed configuration: YAML files mapped onto dataclasses, plus dotted overrides.

A config is plain data. Every key is a dataclass field with a type, so an
unknown key or a value of the wrong type fails at load time naming the
key (``train.epochs: expected int, got 'five'``), long before training.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class ModelConfig:
    name: str = "unet"
    # Keyword arguments for the model builder (encoder, output_stride, aux, ...).
    # They are checked against the builder's signature by create_model.
    args: dict[str, Any] = field(default_factory=dict)
    # None: the encoder's own convention; or 'torchvision' / 'caffe' / 'inception' / a dict
    # with mean, std, channel_order, scale.
    preprocessing: Optional[Union[str, dict[str, Any]]] = None
    # Start from the weights of a model file imseg wrote (a checkpoint such as best.pt, an exported
    # .safetensors, a save_pretrained folder) with a fresh optimiser and schedule: a second training
    # phase or fine-tuning on new data of the same classes (mmsegmentation's load_from). The file must
    # fit this model exactly; a resumed run takes its own checkpoint instead.
    init_from: Optional[str] = None
    # 'random': tensors whose shape differs (a classifier trained for another class count) keep
    # this model's random initialisation, and the run names them (Hugging Face's
    # ignore_mismatched_sizes). Missing or unexpected keys, another architecture, still fail.
    init_mismatched: Literal["error", "random"] = "error"


@dataclass
class DataConfig:
    name: str = "camvid"
    root: Optional[str] = None
    image_dir: str = "images"
    mask_dir: str = "masks"
    splits: dict[str, str] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    palette: list[list[int]] = field(default_factory=list)
    ignore_index: int = 255
    crop_size: list[int] = field(default_factory=lambda: [360, 480])
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    train_size: Optional[list[int]] = None
    eval_size: Optional[list[int]] = None
    hflip: bool = True
    color_jitter: float = 0.0
    batch_size: int = 8
    num_workers: int = 2
    # Keep decoded samples in memory after their first read (later epochs skip the decode). None:
    # on when num_workers is 0 (the loader runs in the training process, so the cache lasts the
    # run); with workers each one would fill its own copy, and lose it at every epoch's end.
    cache: Optional[bool] = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    # Colour-coded masks: a class table (CSV name,r,g,b / YAML / JSON file, or an inline list of
    # {name, color}); see imseg/data/classes.py. Replaces class_names and palette.
    classes: Optional[Union[str, list[dict[str, Any]]]] = None
    unknown_colors: Literal["error", "ignore"] = "error"
    # The mask of images/<stem>.jpg is masks/<mask_prefix><stem><mask_suffix>.png (e.g. _L, _mask).
    mask_prefix: str = ""
    mask_suffix: str = ""
    # Raw mask value -> class id or ignore_index (e.g. Cityscapes labelIds -> trainIds), or the
    # ADE20K convention (0 = unlabelled, k -> k-1); one or the other.
    label_map: dict[int, int] = field(default_factory=dict)
    reduce_zero_label: bool = False
    # name: voc, split train_aug: the SBD folder benchmark_RELEASE (its cls/*.mat class maps).
    sbd_root: Optional[str] = None
    # name: raster: random windows of crop_size drawn per training epoch (scenes are never read whole).
    windows_per_epoch: int = 500


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # Poly decay (power 0.9, as in DeepLab) after a linear warm-up.
    poly_power: float = 0.9
    warmup_iters: int = 0
    warmup_factor: float = 0.1
    min_lr: float = 0.0
    # Fine-tuning: the encoder's learning rate is lr times this (0.1 is usual for an
    # ImageNet-pretrained encoder: its features need nudging, the new decoder learning).
    encoder_lr_mult: float = 1.0


@dataclass
class LossConfig:
    # A weighted sum of losses from imseg.losses.LOSSES (ce, ohem, dice, focal,
    # lovasz, boundary, boundary_aware), each a dict: {name: dice, weight: 0.5, smooth: 1.0}.
    terms: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "ce"}])
    # Given to the terms that take class weights (ce, ohem, boundary_aware):
    # 'none' | 'median_frequency' | 'enet' (1/ln(1.02 + share), milder) | an
    # explicit list, one weight per class (its length is checked against the
    # dataset's classes when training starts).
    class_weights: Union[Literal["none", "median_frequency", "enet"], list[float]] = "none"
    # ENet's c in 1/ln(c + share): 1.02 (the paper's) spreads CamVid's weights 13x between the
    # commonest and rarest class; 1.1 spreads them 3.6x, 1.2 2.3x (milder, for pretrained encoders).
    enet_c: float = 1.02
    # Auxiliary heads' logits get the same sum, times this weight.
    aux_weight: float = 0.4


@dataclass
class EvalConfig:
    """How validation, `imseg eval` and `imseg predict` run the model (see imseg.engine.inference)."""

    mode: Literal["whole", "slide"] = "whole"
    crop_size: Optional[list[int]] = None  # sliding window H, W
    stride: Optional[list[int]] = None  # default: 2/3 of the window
    window_batch: int = 4
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False


@dataclass
class TrainConfig:
    epochs: int = 10
    # Iteration-based schedule (as mmseg's 80k-iteration recipes): train for
    # exactly this many optimiser steps, the LR schedule spanning them, and
    # ignore ``epochs``; the last epoch may end part-way. None: use ``epochs``.
    max_steps: Optional[int] = None
    # End this invocation after this many epochs in total while the LR
    # schedule still spans ``epochs`` (for time-limited or preemptible jobs:
    # run again with --resume to continue). None: run to the end.
    stop_after: Optional[int] = None
    # Train for as many optimiser steps as fit this many minutes on the machine
    # running it (steps and validation passes; see imseg.engine.budget): the
    # first steps are timed once, the count is fixed from them and written to
    # the run's config as ``max_steps``, which a rerun or resume then uses.
    # An explicit ``max_steps`` wins over the budget. None: no budget.
    time_budget_minutes: Optional[float] = None
    val_every: int = 1
    # last.pt is written every ``save_every`` epochs and at the end of the run.
    save_every: int = 1
    # Also a step-NNNNNNN.pt every this many optimiser steps (0: off), keeping
    # the newest ``keep_checkpoints``: a crash then costs at most that many steps.
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 3
    # A non-finite loss stops the run naming the step, or skips that step.
    on_nonfinite: Literal["stop", "skip"] = "stop"
    # Multi-GPU: convert BatchNorm to SyncBatchNorm (CUDA only).
    sync_bn: bool = False
    # Set every BatchNorm's running-statistics momentum (None: the model's own).
    # torchvision's MobileNetV3 uses 0.01, tuned for long ImageNet runs; in a
    # short from-scratch run its running statistics then lag the weights so
    # far that eval-mode predictions collapse to one class: 0.1 fixes that.
    bn_momentum: Optional[float] = None
    grad_accum: int = 1
    # Stop when this many validation rounds in a row bring no new best val
    # mIoU (the reason is logged; last.pt is written as at any end). None: off.
    early_stop: Optional[int] = None
    # Keep an exponential moving average of the weights, updated after every
    # optimiser step (0.999: a window of about 1000 steps). Validation and
    # best.pt use the averaged weights; last.pt holds both. None: off.
    ema_decay: Optional[float] = None
    # Ramp the EMA's decay up as decay * (1 - exp(-step / N)) (YOLOv5's and
    # mmengine's warm-up), so early validations do not score a blend with the
    # random initial weights. None: the full decay from the first step.
    ema_warmup_steps: Optional[int] = None
    # Before each validation, recompute the BatchNorm statistics of a copy of
    # the EMA weights from this many training images (whole, unaugmented,
    # spread over the split): averaged statistics do not fit averaged weights
    # early in a run. Validation and best.pt use that copy. None: off.
    ema_bn_images: Optional[int] = None
    # Fine-tuning: train only the decoder for the first N epochs (the encoder gets no
    # gradient and its BatchNorm statistics stay as loaded), then everything.
    freeze_encoder_epochs: int = 0
    # Keep every BatchNorm's running statistics as loaded (eval-mode normalisation while
    # training; scales and shifts still learn): for small batches on pretrained weights.
    freeze_bn_stats: bool = False
    # 'none', 'bf16', 'fp16', or 'auto': bf16 where it is native (CPUs with
    # AVX512-BF16 or AMX, CUDA GPUs with bf16), fp16 on older GPUs, float32 on
    # other CPUs (where bf16 is emulated and many times slower than float32).
    amp: Literal["none", "auto", "bf16", "fp16"] = "none"
    # Training on the CPU: compute depthwise convolutions' gradients imseg's way
    # (models/depthwise_grad.py), false: torch's.
    fast_depthwise_grad: bool = True
    # Feed training batches channels-last (NHWC): the activations follow, the
    # weights keep their layout. Unset: on the CPU, where oneDNN's NHWC kernels
    # are faster (with the option above, 1.2-1.6x a MobileNetV3 or EfficientNet
    # step: benchmarks/results/depthwise-grad.json), off on GPUs (not measured).
    channels_last: Optional[bool] = None
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    out_dir: str = "runs/default"
    log_every: int = 10
    grad_clip: Optional[float] = None
    progress: bool = True
    threads: Optional[int] = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__  # int, not <class 'int'>
    return str(tp).replace("typing.", "")  # the whole annotation: Optional[int], list[float], int | None


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {sorted(f.name for f in dataclasses.fields(tp))}, got {value!r}")
        return _build(tp, value, key)
    if origin in (list, tuple, collections.abc.Sequence):
        return _convert_sequence(value, origin, args, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        k_tp, v_tp = args or (Any, Any)
        return {_convert(k, k_tp, key): _convert(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    return _convert_scalar(value, tp, key)


def _convert_sequence(value: Any, origin: type, args: tuple, key: str) -> Any:
    """A list (YAML's only sequence) for ``list[T]``, ``tuple[T, ...]``, ``tuple[A, B]`` or ``Sequence[T]``."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        item_types = args
    else:
        item_types = (args[0] if args else Any,) * len(value)
    items = [_convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types))]
    # A config list stays a list; a tuple given from Python stays a tuple (the model spec records it as given).
    return items if origin is list or isinstance(value, list) else tuple(items)


def _convert_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; users write it that way
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and math.isfinite(number):
                return number
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {value!r}")
    # Any other class (a model builder may take one, given from Python, never from YAML): an instance of it.
    kind = typing.get_origin(tp) or tp
    if isinstance(kind, type) and isinstance(value, kind):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(names))}")
        kwargs[k] = _convert(v, hints[k], key)
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    # YAML gives 5 -> int, 0.1 -> float, true -> bool, [1,2] -> list, null -> None.
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_scalar(text)
    return raw


# ---------------------------------------------------------------- ranges

def _at_least(n: float) -> tuple[Any, str]:
    return (lambda v: v >= n), f"a number >= {n}"


def _above(n: float) -> tuple[Any, str]:
    return (lambda v: v > n), f"a number > {n}"


_FRACTION = ((lambda v: 0 < v <= 1), "a number in (0, 1]")
_COEFFICIENT = ((lambda v: 0 <= v < 1), "a number in [0, 1)")
_OPEN_UNIT = ((lambda v: 0 < v < 1), "a number in (0, 1)")

# Checked when a config loads, so a zero batch size or a negative epoch count
# fails naming the key instead of dividing by zero (or training nothing) later.
# None (an optional value left unset) is always allowed; lists are checked per item.
RANGES: dict[str, tuple[Any, str]] = {
    "data.batch_size": _at_least(1), "data.num_workers": _at_least(0), "data.color_jitter": _at_least(0),
    "data.crop_size": _at_least(1), "data.train_size": _at_least(1), "data.eval_size": _at_least(1),
    "data.scale_range": _above(0),
    "optim.lr": _above(0), "optim.momentum": _COEFFICIENT, "optim.weight_decay": _at_least(0),
    "optim.betas": _COEFFICIENT, "optim.poly_power": _at_least(0), "optim.warmup_iters": _at_least(0),
    "optim.warmup_factor": _FRACTION, "optim.min_lr": _at_least(0), "optim.encoder_lr_mult": _at_least(0),
    "loss.aux_weight": _at_least(0), "loss.enet_c": _above(1),
    "eval.crop_size": _at_least(1), "eval.stride": _at_least(1), "eval.window_batch": _at_least(1),
    "eval.scales": _above(0),
    "train.epochs": _at_least(1), "train.max_steps": _at_least(1), "train.stop_after": _at_least(1),
    "train.time_budget_minutes": _above(0), "train.val_every": _at_least(1), "train.save_every": _at_least(1),
    "train.checkpoint_every_steps": _at_least(0), "train.keep_checkpoints": _at_least(1),
    "train.bn_momentum": _FRACTION, "train.grad_accum": _at_least(1), "train.log_every": _at_least(1),
    "train.grad_clip": _above(0), "train.threads": _at_least(1), "train.early_stop": _at_least(1),
    "train.ema_decay": _OPEN_UNIT, "train.ema_warmup_steps": _at_least(1), "train.ema_bn_images": _at_least(1),
    "train.freeze_encoder_epochs": _at_least(0),
}


def check_ranges(cfg: Config) -> Config:
    """Raise a ConfigError naming the first value outside its range (see RANGES)."""
    for dotted, (ok, expected) in RANGES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            if item is not None and not ok(item):
                where = dotted if i is None else f"{dotted}[{i}]"
                raise ConfigError(f"{where}: expected {expected}, got {item!r}")
    low, high = cfg.data.scale_range if len(cfg.data.scale_range) == 2 else (None, None)
    if low is None or low > high:
        raise ConfigError(f"data.scale_range: expected [low, high] with low <= high, got {cfg.data.scale_range}")
    if cfg.train.early_stop is not None and not cfg.data.val_split:
        raise ConfigError(f"train.early_stop={cfg.train.early_stop} counts validation rounds, but data.val_split "
                          f"is empty: name a validation split or set train.early_stop=null")
    for key in ("ema_warmup_steps", "ema_bn_images"):
        if getattr(cfg.train, key) is not None and cfg.train.ema_decay is None:
            raise ConfigError(f"train.{key} shapes the EMA, but train.ema_decay is null: set it (e.g. 0.999) "
                              f"or train.{key}=null")
    return cfg


def check_model_args(cfg: Config) -> Config:
    """Check ``model.args`` against the builder's signature and annotations, naming the key that does not fit.

    ``output_stride: "16"`` then fails here (``model.args.output_stride:
    expected int, got '16'``) instead of deep inside the model. Ints pass for
    floats, lists for tuples and sequences, None where the annotation allows it.
    """
    from imseg.models.registry import COMMON_ARGUMENT_TYPES, model_arguments, model_info  # the zoo pulls in torch

    try:
        builder = model_info(cfg.model.name).builder
    except ValueError as e:
        raise ConfigError(f"model.name: {e}") from None
    accepted = list(model_arguments(cfg.model.name))  # the builder's own and those every model takes (norm)
    try:
        hints = {**COMMON_ARGUMENT_TYPES, **typing.get_type_hints(builder)}
    except (NameError, TypeError, AttributeError):  # an annotation that cannot be resolved here: create_model still checks names
        hints = dict(COMMON_ARGUMENT_TYPES)
    args = {}
    for name, value in cfg.model.args.items():
        if name not in accepted:
            raise ConfigError(f"unknown config key 'model.args.{name}'; model {cfg.model.name!r} accepts: "
                              f"{', '.join(sorted(accepted)) or 'no arguments'}")
        args[name] = _convert(value, hints.get(name, Any), f"model.args.{name}")
    cfg.model.args = args
    return cfg


def check_config(cfg: Config) -> Config:
    """Every load-time check (ranges, model arguments), for a config built or edited in Python."""
    return check_model_args(check_ranges(cfg))


def config_from_dict(raw: dict[str, Any]) -> Config:
    return check_config(_build(Config, raw or {}))


def data_config(raw: dict[str, Any]) -> DataConfig:
    """A checked `DataConfig` from a mapping of its fields (the ``data`` section alone)."""
    return check_ranges(Config(data=_build(DataConfig, dict(raw), "data"))).data


def build_dataclass(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    """An instance of the dataclass ``cls`` from a mapping, every key and type checked as for `Config`
    (for other typed configs built the same way, e.g. imseg.search's)."""
    return _build(cls, raw or {}, prefix)


def read_config_file(path: str | Path | None) -> dict[str, Any]:
    """The top-level mapping of a YAML config file ({} for None); a missing or broken file is a ConfigError."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    raw = apply_overrides(read_config_file(path), overrides or [])
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        where = f" in {path}" if path else ""
        raise ConfigError(f"{e}{where}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
