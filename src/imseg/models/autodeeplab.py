"""Auto-DeepLab: Liu, Chen, Schroff, Adam, Hua, Yuille & Fei-Fei, "Auto-DeepLab: Hierarchical Neural
Architecture Search for Semantic Image Segmentation" (CVPR 2019).

Any network of the Auto-DeepLab search space, fixed, built as the official
TensorFlow code builds the found one (tensorflow/models research/deeplab/core
``nas_network.hnasnet`` and ``nas_cell.NASBaseCell``): a 3-conv stem to
stride 4, then one cell per entry of a *path* of levels (level l = stride
4 * 2**l), each cell made of the 5 blocks of a *genotype*. Each cell has
F * 2**level filters per op (F = ``filter_multiplier``) and outputs the
concatenation of its 5 blocks. On top: ReLU, DeepLabv3 ASPP (256 channels,
image pooling) and the DeepLabv3+ decoder with the last stride-4 cell as the
low-level features.

An architecture is data: a genotype, a path and F, read from a small JSON
file (`read_architecture`). The paper's found network is shipped as three
such files, ``autodeeplab_genotypes/autodeeplab_{s,m,l}.json`` (F = 20, 32,
48), registered as ``autodeeplab_s/m/l``; ``autodeeplab`` builds any other,
e.g. the ``found.json`` of ``imseg search`` (imseg/search).

The found genotype (B1..B5 = block outputs; h0 = previous cell, h1 = the
one before, both after the cell's 1x1 pre-processing):

    B1 = atrous5x5(h1) + sep3x3(h0)
    B2 = sep3x3(h1)    + atrous3x3(h0)
    B3 = sep3x3(B2)    + sep3x3(h1)
    B4 = sep5x5(B3)    + sep5x5(B1)
    B5 = sep5x5(B2)    + atrous5x5(B4)

Choices where the sources leave a gap (see docs/models/hrnet_autodeeplab_fdnet.md):
ASPP rates 12/24/36 (the DeepLab convention at output stride 8; the paper's
value is a command-line flag), regular (not separable) 3x3 convs in ASPP
and decoder (that is what reproduces the published parameter counts),
BatchNorm eps 1e-3 as TF but PyTorch's default momentum, and every
resolution change resized to the size the path's stride gives for the
input (which equals TF's ``(d - 1) * scale + 1`` on its 8k+1 crop sizes).
The ops the found cell does not use (pooling, skip) and paths other than the
found one follow the rules of the same TF code, or ours where it has none
(said where they are built).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imseg.models.deeplab import DeepLabV3Plus
from imseg.models.encoders import Encoder
from imseg.models.registry import register_model, register_variant
from imseg.preprocessing import Preprocessing

# The 8 candidate operators of the search space, in the paper's order (section 3.1), by the names
# architecture files use. "zero" (no connection) exists only during the search: decoding never keeps it.
OPERATIONS = ("sep_3x3", "sep_5x5", "atrous_3x3", "atrous_5x5", "avg_pool_3x3", "max_pool_3x3", "skip", "zero")
BLOCKS = 5  # per cell, each the sum of two ops
LEVELS = 4  # strides 4, 8, 16, 32
# Where the shipped architectures (the paper's S / M / L) live, and the file format they share with found.json.
ARCHITECTURE_DIR = Path(__file__).parent / "autodeeplab_genotypes"
ARCHITECTURE_FORMAT = "imseg-autodeeplab-architecture"
ARCHITECTURE_VERSION = 1
# From scratch, TF DeepLab's input convention: 2 * (x / 255) - 1.
AUTODEEPLAB_PREPROCESSING = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "RGB", 1 / 255)


# --------------------------------------------------------------------------- architectures as data


@dataclass(frozen=True)
class Architecture:
    """One network of the space: 10 ``(operator, input)`` pairs (two per block; input 0 = h0 = H^(l-1),
    1 = h1 = H^(l-2), 2 + b = block b), the level of every cell, and F (filters per op at stride 4)."""

    genotype: tuple[tuple[str, int], ...]
    path: tuple[int, ...]
    filter_multiplier: int

    def to_dict(self) -> dict[str, Any]:
        return {"format": ARCHITECTURE_FORMAT, "version": ARCHITECTURE_VERSION,
                "filter_multiplier": self.filter_multiplier, "path": list(self.path),
                "genotype": [[op, source] for op, source in self.genotype]}

    def to_json(self, **extra: Any) -> str:
        """The file text: one line per block, so a diff of two architectures reads block by block."""
        head = {**self.to_dict(), **extra}
        genotype = head.pop("genotype")
        pairs = [json.dumps(pair) for pair in genotype]
        blocks = ",\n".join(f"    {pairs[2 * b]}, {pairs[2 * b + 1]}" for b in range(BLOCKS))
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
        note = '  "genotype_inputs": "0 = previous cell, 1 = the cell before it, 2 + b = block b of this cell",'
        return "{\n" + "\n".join(lines) + "\n" + note + '\n  "genotype": [\n' + blocks + "\n  ]\n}\n"

    def as_kwargs(self) -> dict[str, Any]:
        """The ``autodeeplab`` builder's arguments that rebuild this architecture without its file."""
        return {"genotype": [[op, source] for op, source in self.genotype], "path": list(self.path),
                "filter_multiplier": self.filter_multiplier}


def op_kind(name: str) -> tuple[str, int]:
    """``"sep_5x5"`` -> ``("sep", 5)``; pools -> (``"avg_pool"``/``"max_pool"``, 3); ``"skip"`` -> ("skip", 1)."""
    if name in ("skip", "zero"):
        return name, 1
    kind, size = name.rsplit("_", 1)
    return kind, int(size.split("x")[0])


def _check_genotype(genotype: Any) -> tuple[tuple[str, int], ...]:
    usable = OPERATIONS[:-1]
    if not isinstance(genotype, (list, tuple)) or len(genotype) != 2 * BLOCKS:
        raise ValueError(f"an Auto-DeepLab genotype is {2 * BLOCKS} [operator, input] pairs (two per block), "
                         f"got {genotype!r:.120}")
    pairs = []
    for k, pair in enumerate(genotype):
        op, source = pair if isinstance(pair, (list, tuple)) and len(pair) == 2 else (None, None)
        inputs = 2 + k // 2  # block b reads the two cell inputs and blocks 0..b-1
        if op not in usable or not isinstance(source, int) or isinstance(source, bool) or not 0 <= source < inputs:
            raise ValueError(f"genotype[{k}] (block {k // 2}) must be [operator, input] with operator one of "
                             f"{', '.join(usable)} and input 0..{inputs - 1}, got {pair!r}")
        pairs.append((op, source))
    return tuple(pairs)


def _check_path(path: Any) -> tuple[int, ...]:
    ok = isinstance(path, (list, tuple)) and len(path) > 0 and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < LEVELS for v in path)
    if not ok:
        raise ValueError(f"an Auto-DeepLab path is a non-empty list of levels 0..{LEVELS - 1} "
                         f"(strides 4, 8, 16, 32), got {path!r:.120}")
    if path[0] > 1:
        raise ValueError(f"an Auto-DeepLab path starts at level 0 or 1 (stride 4 or 8, after the stride-4 stem), "
                         f"got {list(path)}")
    jumps = [i for i in range(1, len(path)) if abs(path[i] - path[i - 1]) > 1]
    if jumps:
        raise ValueError(f"an Auto-DeepLab path moves at most one level per cell, but cell {jumps[0]} goes from "
                         f"{path[jumps[0] - 1]} to {path[jumps[0]]} in {list(path)}")
    return tuple(path)


def check_architecture(genotype: Any, path: Any, filter_multiplier: Any) -> Architecture:
    """An `Architecture` from plain values (lists from JSON or YAML); a bad one fails in one line naming it."""
    if not isinstance(filter_multiplier, int) or isinstance(filter_multiplier, bool) or filter_multiplier < 1:
        raise ValueError(f"filter_multiplier (F) must be a positive integer, got {filter_multiplier!r}")
    return Architecture(_check_genotype(genotype), _check_path(path), filter_multiplier)


def read_architecture(source: str | Path) -> Architecture:
    """The architecture in a JSON file (``found.json``), or a shipped one by name (``autodeeplab_s``)."""
    path = Path(source).expanduser()
    shipped = ARCHITECTURE_DIR / f"{source}.json"
    if not path.is_file() and isinstance(source, str) and shipped.is_file():
        path = shipped
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in ARCHITECTURE_DIR.glob("*.json")))
        raise ValueError(f"Auto-DeepLab architecture {str(source)!r} is neither a file nor one of: {names}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Auto-DeepLab architecture file {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != ARCHITECTURE_FORMAT:
        raise ValueError(f"{path} is not an Auto-DeepLab architecture file: expected 'format': "
                         f"{ARCHITECTURE_FORMAT!r} with genotype, path and filter_multiplier")
    missing = [k for k in ("genotype", "path", "filter_multiplier") if k not in data]
    if missing:
        raise ValueError(f"Auto-DeepLab architecture file {path} has no {', '.join(missing)}")
    try:
        return check_architecture(data["genotype"], data["path"], data["filter_multiplier"])
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def low_level_cell(path: Sequence[int]) -> int | None:
    """The cell whose output feeds the decoder's stride-4 branch: the last stride-4 cell before the final
    one (TF's ``Cell_2`` on the found path); None: the path has none and the stem's stride-4 map is used.
    For the found path this is TF's choice; for other paths it is ours, the same rule generalised."""
    before_last = [i for i, level in enumerate(path[:-1]) if level == 0]
    return before_last[-1] if before_last else None


# --------------------------------------------------------------------------- ops and cells


def _bn(channels: int) -> nn.BatchNorm2d:
    # TF nas_arg_scope: epsilon 1e-3. Its decay 0.9997 (momentum 3e-4) only suits million-step schedules;
    # PyTorch's 0.1 lets the running statistics follow within a few hundred steps.
    return nn.BatchNorm2d(channels, eps=1e-3)


def _resize_aligned(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """TF ``resize_bilinear`` (align_corners=True), the resampling of every NAS cell."""
    return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=True)


def _relu_conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """The cell's input pre-processing: ReLU -> 1x1 conv -> BN (not in place: cell outputs are read twice)."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(in_channels, out_channels, 1, bias=False), _bn(out_channels))


class SepConvOp(nn.Sequential):
    """``separable_kxk_2``: two repeats of ReLU -> depthwise kxk -> pointwise 1x1 -> BN; stride on the first."""

    def __init__(self, channels: int, kernel_size: int, stride: int) -> None:
        layers: list[nn.Module] = []
        for repeat in range(2):
            layers += [
                nn.ReLU(),
                nn.Conv2d(channels, channels, kernel_size, stride if repeat == 0 else 1, kernel_size // 2,
                          groups=channels, bias=False),
                nn.Conv2d(channels, channels, 1, bias=False),
                _bn(channels),
            ]  # fmt: skip
        super().__init__(*layers)


class AtrousConvOp(nn.Module):
    """``atrous_kxk``: ReLU -> regular kxk conv with rate 2 -> BN.

    At stride 2 TF instead halves the map bilinearly (align_corners) and
    uses rate 1; the halved size is ceil(d / 2), the same as a stride-2 conv.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        rate = 1 if stride == 2 else 2
        padding = rate * (kernel_size // 2)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=padding, dilation=rate, bias=False)
        self.bn = _bn(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        if self.stride == 2:
            h, w = x.shape[-2:]
            x = _resize_aligned(x, ((h + 1) // 2, (w + 1) // 2))
        return self.bn(self.conv(x))


def build_op(name: str, channels: int, stride: int) -> nn.Module:
    """The operator ``name`` (one of OPERATIONS but "zero") on ``channels`` channels at ``stride`` 1 or 2.

    Pools pad by 1 (average over the valid pixels only), so at stride 2 every
    op halves a d-pixel side to ceil(d / 2), as the stride-2 convolutions do.
    A stride-2 skip cannot be an identity: it is ReLU -> 1x1 conv stride 2 -> BN,
    the reduction TF's NAS cells apply to an input of another size (our choice;
    DARTS uses a two-branch FactorizedReduce instead).
    """
    kind, kernel = op_kind(name)
    if kind == "sep":
        return SepConvOp(channels, kernel, stride)
    if kind == "atrous":
        return AtrousConvOp(channels, kernel, stride)
    if kind == "avg_pool":
        return nn.AvgPool2d(kernel, stride, kernel // 2, count_include_pad=False)
    if kind == "max_pool":
        return nn.MaxPool2d(kernel, stride, kernel // 2)
    if kind == "skip":
        if stride == 1:
            return nn.Identity()
        return nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1, stride, bias=False), _bn(channels))
    raise ValueError(f"operator {name!r} cannot be built; choose one of {', '.join(OPERATIONS[:-1])}")


class Cell(nn.Module):
    """One Auto-DeepLab cell with f filters per op; output = concat of its 5 blocks (5f channels)."""

    def __init__(self, prev_channels: int, prev_prev_channels: int, filters: int, stride: int, resize_h1: bool,
                 genotype: Sequence[tuple[str, int]]) -> None:
        super().__init__()
        self.resize_h1 = resize_h1
        self.sources = [source for _, source in genotype]
        self.preprocess0 = _relu_conv_bn(prev_channels, filters)
        # TF uses h1 as it is when it already has f channels (never the case on the found path, but kept exact).
        self.preprocess1 = (
            _relu_conv_bn(prev_prev_channels, filters) if prev_prev_channels != filters else nn.Identity()
        )
        # Only ops on the cell inputs reduce the resolution; blocks are already at the cell's own.
        self.ops = nn.ModuleList(build_op(op, filters, stride if source < 2 else 1) for op, source in genotype)
        self.out_channels = BLOCKS * filters

    def forward(self, h0: torch.Tensor, h1: torch.Tensor, keep_prob: torch.Tensor | None = None) -> torch.Tensor:
        if self.resize_h1:
            h1 = _resize_aligned(h1, h0.shape[-2:])
        states = [self.preprocess0(h0), self.preprocess1(h1)]
        for block in range(BLOCKS):
            total = None
            for k in (2 * block, 2 * block + 1):
                op = self.ops[k]
                y = op(states[self.sources[k]])
                if keep_prob is not None and not isinstance(op, nn.Identity):  # as DARTS: identities are never dropped
                    y = drop_path(y, keep_prob)
                total = y if total is None else total + y
            states.append(total)
        return torch.cat(states[2:], dim=1)


def drop_path(x: torch.Tensor, keep_prob: torch.Tensor) -> torch.Tensor:
    """Zero whole samples with probability 1 - keep_prob, rescaling the kept ones (TF ``_apply_drop_path``)."""
    mask = torch.floor(keep_prob + torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device))
    return x * mask / keep_prob


# --------------------------------------------------------------------------- the network


class AutoDeepLabBackbone(Encoder):
    """Stem + one cell per level of ``path``, built from ``genotype`` with ``filters`` (F) per op at stride 4;
    returns [the low-level cell (stride 4, see `low_level_cell`), ReLU(last cell)].

    Scheduled drop path (off at ``drop_path_keep_prob=1``): in training, op
    outputs of cell i are dropped per sample with keep probability
    ``1 - ratio * (i + 1) / n * (1 - keep_prob)`` (n cells), where ratio =
    min(1, step / total_steps) grows linearly with the number of training
    forward passes so far (the buffer ``drop_path_step``, saved in checkpoints).
    """

    def __init__(
        self,
        name: str,
        filters: int,
        path: Sequence[int],
        genotype: Sequence[tuple[str, int]],
        in_channels: int = 3,
        drop_path_keep_prob: float = 1.0,
        drop_path_total_steps: int = 500_000,
    ) -> None:
        if not 0.0 < drop_path_keep_prob <= 1.0:
            raise ValueError(f"drop_path_keep_prob must be in (0, 1], got {drop_path_keep_prob!r}")
        if drop_path_total_steps < 1:
            raise ValueError(f"drop_path_total_steps must be positive, got {drop_path_total_steps!r}")
        arch = check_architecture(genotype, path, filters)
        self.path, self.genotype = arch.path, arch.genotype
        self.low_level_cell = low_level_cell(self.path)
        # A cell at level l outputs its 5 blocks of filters * 2**l channels each; no stride-4 cell: the stem's map.
        low_channels = 128 if self.low_level_cell is None else BLOCKS * filters
        super().__init__(
            name=name,
            in_channels=in_channels,
            channels=[low_channels, BLOCKS * filters * 2 ** self.path[-1]],
            strides=[4, 4 * 2 ** self.path[-1]],
            output_stride=4 * 2 ** self.path[-1],
            preprocessing=AUTODEEPLAB_PREPROCESSING.for_channels(in_channels),
        )
        # Stem (TF _nas_stem): the pre-ReLU stride-2 map is cell 0's h1, the stride-4 map its h0.
        self.stem0 = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 2, 1, bias=False), _bn(64), nn.ReLU(inplace=True))
        self.stem1 = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1, bias=False), _bn(64))
        self.stem2 = nn.Sequential(nn.ReLU(), nn.Conv2d(64, 128, 3, 2, 1, bias=False), _bn(128))
        self.cells, self.upsample_before = self._cells(filters)

        self.drop_path_keep_prob = drop_path_keep_prob
        self.drop_path_total_steps = drop_path_total_steps
        if drop_path_keep_prob < 1.0:
            self.register_buffer("drop_path_step", torch.zeros((), dtype=torch.long))

    def _cells(self, filters: int) -> tuple[nn.ModuleList, list[bool]]:
        """The cells along the path, and whether each one's h0 is upsampled first (the path goes down)."""
        cells = []
        # (channels, level) of h0 and h1; the stem's stride-2 map is level -1.
        prev, prev_prev = (128, 0), (64, -1)
        upsample_before: list[bool] = []
        for level in self.path:
            stride = 2 if level == prev[1] + 1 else 1
            # h0 arrives at the cell's level (upsampled first when the path goes down) or one above it (stride 2).
            h0_level = level - 1 if stride == 2 else level
            cells.append(Cell(prev[0], prev_prev[0], filters * 2**level, stride, prev_prev[1] != h0_level,
                              self.genotype))
            upsample_before.append(level == prev[1] - 1)
            prev_prev, prev = prev, (cells[-1].out_channels, level)
        return nn.ModuleList(cells), upsample_before

    def _keep_probs(self) -> list[torch.Tensor | None]:
        if not self.training or self.drop_path_keep_prob >= 1.0:
            return [None] * len(self.cells)
        ratio = (self.drop_path_step.float() / self.drop_path_total_steps).clamp(max=1.0)
        self.drop_path_step += 1
        n = len(self.cells)
        return [1 - ratio * ((i + 1) / n) * (1 - self.drop_path_keep_prob) for i in range(n)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h1 = self.stem1(self.stem0(x))
        h0 = self.stem2(h1)
        sizes = {0: h0.shape[-2:]}  # spatial size of each level, known before the path comes back down to it
        low = h0
        steps = zip(self.cells, self._keep_probs(), self.path, self.upsample_before)
        for i, (cell, keep, level, up) in enumerate(steps):
            if up:
                h0 = _resize_aligned(h0, sizes[level])
            out = cell(h0, h1, keep)
            sizes[level] = out.shape[-2:]
            h1, h0 = h0, out
            if i == self.low_level_cell:
                low = out
        return [low, F.relu(h0)]


def _build(name: str, num_classes: int, arch: Architecture, in_channels: int, aspp_rates: Sequence[int] | None,
           drop_path_keep_prob: float, drop_path_total_steps: int) -> DeepLabV3Plus:
    backbone = AutoDeepLabBackbone(name, arch.filter_multiplier, arch.path, arch.genotype, in_channels,
                                   drop_path_keep_prob, drop_path_total_steps)
    if aspp_rates is None:  # 12/24/36 at output stride 8, spanning the same image area at the path's own stride
        aspp_rates = tuple(max(1, r * 8 // backbone.output_stride) for r in (12, 24, 36))
    return DeepLabV3Plus(backbone, num_classes, aspp_rates=tuple(aspp_rates),
                         separable=False, aux=False)


_PAPER = (
    "Liu, Chen, Schroff, Adam, Hua, Yuille, Fei-Fei: Auto-DeepLab: Hierarchical Neural Architecture Search "
    "for Semantic Image Segmentation"
)
# The found network, as the tests and readers know it: TF's path, and its genotype as (kind, kernel, input).
_FOUND = read_architecture("autodeeplab_s")
PATH = _FOUND.path
GENOTYPE = tuple((*op_kind(op), source) for op, source in _FOUND.genotype)

# S / M / L differ only in F, the filters per op of a stride-4 cell: each is a file of ARCHITECTURE_DIR,
# named as the model, and they share one builder signature.
_VARIANTS = {
    "autodeeplab_s": dict(
        published="10.15M params; Cityscapes val 79.74 mIoU",
        summary="Searched network-level path (12 cells, strides 4..32, output stride 8) and cell, F=20, "
        "trained from scratch with ASPP + DeepLabv3+ decoder (10.15M params published).",
    ),
    "autodeeplab_m": dict(
        published="21.62M params; Cityscapes val 80.04 mIoU",
        summary="Auto-DeepLab-M: the searched 12-cell path and cell with F=32, ASPP + DeepLabv3+ decoder, "
        "output stride 8 (21.62M params published).",
    ),
    "autodeeplab_l": dict(
        published="44.42M params; Cityscapes val 80.33 mIoU",
        summary="Auto-DeepLab-L: the searched 12-cell path and cell with F=48, ASPP + DeepLabv3+ decoder, "
        "output stride 8 (44.42M params published).",
    ),
}  # fmt: skip


def _autodeeplab_builder(name: str) -> Callable[..., DeepLabV3Plus]:
    def build(
        num_classes: int,
        *,
        in_channels: int = 3,
        aspp_rates: tuple[int, ...] = (12, 24, 36),
        drop_path_keep_prob: float = 1.0,
        drop_path_total_steps: int = 500_000,
    ) -> DeepLabV3Plus:
        return _build(name, num_classes, read_architecture(name), in_channels, aspp_rates, drop_path_keep_prob,
                      drop_path_total_steps)

    return build


for _name, _facts in _VARIANTS.items():
    register_variant(_name, _autodeeplab_builder(_name), paper=_PAPER, year=2019, **_facts)


@register_model(
    "autodeeplab",
    paper=_PAPER,
    year=2019,
    summary="Any network of the Auto-DeepLab space (genotype, path, F; e.g. the found.json of `imseg search`) "
    "with ASPP + DeepLabv3+ decoder, trained from scratch; by default the paper's found network at F=20.",
)
def autodeeplab(
    num_classes: int,
    *,
    architecture: str | None = None,
    genotype: Sequence[tuple[str, int]] | None = None,
    path: Sequence[int] | None = None,
    filter_multiplier: int | None = None,
    in_channels: int = 3,
    aspp_rates: Sequence[int] | None = None,
    drop_path_keep_prob: float = 1.0,
    drop_path_total_steps: int = 500_000,
) -> DeepLabV3Plus:
    """A network of the Auto-DeepLab space.

    ``architecture``: a JSON file (``found.json``) or a shipped name
    (``autodeeplab_s``, the default); ``genotype``, ``path`` and
    ``filter_multiplier`` override its values (the paper searches with F=8 and
    retrains with F=20, 32 or 48). ``aspp_rates``: None scales 12/24/36 from
    output stride 8 to the path's last stride. The model's spec records the
    resolved genotype, path and F, so its checkpoints rebuild without the file.
    """
    base = read_architecture(architecture or "autodeeplab_s")
    arch = check_architecture(base.genotype if genotype is None else genotype, base.path if path is None else path,
                              base.filter_multiplier if filter_multiplier is None else filter_multiplier)
    model = _build("autodeeplab", num_classes, arch, in_channels, aspp_rates, drop_path_keep_prob,
                   drop_path_total_steps)
    model.imseg_resolved_kwargs = {"architecture": None, **arch.as_kwargs()}  # read by create_model
    return model
