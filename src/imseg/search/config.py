"""The search's typed config: YAML mapped onto dataclasses, dotted overrides, ranges checked at load.

Built the way imseg.config builds training configs (same conversion, same
one-line errors naming the key); the ``data`` section *is* training's
`DataConfig`, so a search reads every dataset ``imseg train`` reads.
Defaults are the paper's settings (Liu et al. 2019, section 4: Cityscapes,
321x321 crops, batch 2, L=12, F=8, 40 epochs, architecture updates from
epoch 20); configs/search/camvid_cpu.yaml is a small CPU configuration.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from imseg.config import ConfigError, DataConfig, apply_overrides, build_dataclass, data_config, read_config_file

# The paper's search crops and batch; every other data key keeps training's default.
PAPER_DATA = {"crop_size": [321, 321], "batch_size": 2}


@dataclass
class SpaceConfig:
    """The supernet: L layers on the trellis of strides 4/8/16/32, F filters per op at stride 4."""

    layers: int = 12  # L
    filter_multiplier: int = 8  # F; a node at stride s has B * F * s / 4 channels (B = 5 blocks)
    # The 2-layer stem (each conv stride 2): its two widths. Ours; the paper does not give them.
    stem_channels: list[int] = field(default_factory=lambda: [64, 128])
    # The ASPP head at stride s has a 3x3 branch of rate aspp_rate / s (paper: 96 / s on 321x321 crops).
    aspp_rate: int = 96


@dataclass
class WeightOptimConfig:
    """The network weights w: SGD on one half of the training split."""

    lr: float = 0.025  # cosine from lr to lr_min over the whole search, stepped per step
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: Optional[float] = 5.0  # DARTS' value; the paper does not say (null: off)


@dataclass
class ArchOptimConfig:
    """The architecture alpha (cell) and beta (network level): Adam on the other half."""

    lr: float = 3e-3
    weight_decay: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # the paper gives none: Adam's defaults
    init_scale: float = 1e-3  # alpha, beta ~ N(0, 1) * init_scale
    # Architecture updates start at this epoch (0-based): the weights warm up first (paper: 20 of 40).
    start_epoch: int = 20


@dataclass
class SearchRunConfig:
    epochs: int = 40
    # End this invocation after this many epochs in all (resume with --resume auto to continue).
    stop_after: Optional[int] = None
    seed: int = 0  # the initial weights, alpha, beta, the halves of the split, data order and augmentation
    device: str = "auto"
    amp: Literal["none", "bf16"] = "none"  # bf16 autocast of the supernet's forward (no loss scaling needed)
    threads: Optional[int] = None
    out_dir: str = "runs/search"
    log_every: int = 10
    # Also a step-NNNNNNN.pt every this many steps (0: off), keeping the newest keep_checkpoints.
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    progress: bool = True
    plots: bool = True  # alpha.png, beta.png and trellis.png in the run folder after every epoch


@dataclass
class SearchConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(**PAPER_DATA))
    space: SpaceConfig = field(default_factory=SpaceConfig)
    weights: WeightOptimConfig = field(default_factory=WeightOptimConfig)
    arch: ArchOptimConfig = field(default_factory=ArchOptimConfig)
    search: SearchRunConfig = field(default_factory=SearchRunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _at_least(n: float):
    return (lambda v: v >= n), f"a number >= {n}"


_ABOVE_ZERO = ((lambda v: v > 0), "a number > 0")
_COEFFICIENT = ((lambda v: 0 <= v < 1), "a number in [0, 1)")
RANGES = {
    "space.layers": _at_least(1), "space.filter_multiplier": _at_least(1), "space.stem_channels": _at_least(1),
    "space.aspp_rate": _at_least(1),
    "weights.lr": _ABOVE_ZERO, "weights.lr_min": _at_least(0), "weights.momentum": _COEFFICIENT,
    "weights.weight_decay": _at_least(0), "weights.grad_clip": _ABOVE_ZERO,
    "arch.lr": _ABOVE_ZERO, "arch.weight_decay": _at_least(0), "arch.betas": _COEFFICIENT,
    "arch.init_scale": _ABOVE_ZERO, "arch.start_epoch": _at_least(0),
    "search.epochs": _at_least(1), "search.stop_after": _at_least(1), "search.threads": _at_least(1),
    "search.log_every": _at_least(1), "search.checkpoint_every_steps": _at_least(0),
    "search.keep_checkpoints": _at_least(1),
}  # fmt: skip


def check_search_config(cfg: SearchConfig) -> SearchConfig:
    """Raise a ConfigError naming the first value out of range or out of shape."""
    for dotted, (ok, expected) in RANGES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        for i, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
            if item is not None and not ok(item):
                raise ConfigError(f"{dotted if i is None else f'{dotted}[{i}]'}: expected {expected}, got {item!r}")
    if len(cfg.space.stem_channels) != 2:
        raise ConfigError(f"space.stem_channels: expected 2 widths (the stem's two convs), "
                          f"got {cfg.space.stem_channels}")
    if len(cfg.arch.betas) != 2:
        raise ConfigError(f"arch.betas: expected 2 values (Adam's beta1, beta2), got {cfg.arch.betas}")
    if cfg.weights.lr_min > cfg.weights.lr:
        raise ConfigError(f"weights.lr_min ({cfg.weights.lr_min}) must not exceed weights.lr ({cfg.weights.lr})")
    if cfg.arch.start_epoch >= cfg.search.epochs:
        raise ConfigError(f"arch.start_epoch={cfg.arch.start_epoch} leaves no epoch of architecture updates in "
                          f"search.epochs={cfg.search.epochs}: the search would decode the initial alpha and beta")
    return cfg


def search_config_from_dict(raw: dict[str, Any]) -> SearchConfig:
    raw = dict(raw or {})
    data = raw.pop("data", None) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"data: expected a mapping of DataConfig keys, got {data!r}")
    cfg = build_dataclass(SearchConfig, raw)
    cfg.data = data_config({**PAPER_DATA, **data})  # the paper's crop and batch unless the file says otherwise
    return check_search_config(cfg)


def load_search_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SearchConfig:
    """The search config in YAML file ``path`` (None: the paper's defaults) with ``key.sub=value`` overrides."""
    raw = apply_overrides(read_config_file(path), overrides or [])
    try:
        return search_config_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{e}{f' in {path}' if path else ''}") from None


def save_search_config(cfg: SearchConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
