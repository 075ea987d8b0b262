"""The Auto-DeepLab search space, relaxed: mixed ops, the search cell, the supernet and alpha / beta.

Cell level (as DARTS): every block sums, over all its candidate inputs (the
two cell inputs and the earlier blocks), a *mixed op*: the softmax(alpha)
weighted sum of the 8 operators on that edge. 2+3+4+5+6 = 20 edges x 8
operators; one alpha for every cell of the supernet.

Network level: layer l holds a node per reachable stride s in {4, 8, 16,
32}. A node sums one cell per incoming transition (from s/2, s and 2s of
layer l-1), each weighted by beta; the betas of one *source* node are a
softmax over its outgoing transitions (paper eq. 6). Every node of the last
layer feeds an ASPP head; the heads' logits, upsampled to the input size,
are summed.

The weights of the network (``SuperNet``) and the architecture
(``ArchParameters``) are separate modules: the bilevel loop optimises each
on its own half of the data, and only the former is wrapped in
DistributedDataParallel.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imseg.models.autodeeplab import BLOCKS, LEVELS, OPERATIONS, build_op, op_kind

assert OPERATIONS[-1] == "zero"  # MixedOp leaves the last weight out: zero contributes nothing but its share
EDGES = sum(2 + b for b in range(BLOCKS))  # 20: block b reads the 2 cell inputs and blocks 0..b-1
MOVES = 3  # a transition goes one level finer, stays, or goes one level coarser


def edge_offset(block: int) -> int:
    """Row of alpha holding the edge (input 0 -> ``block``); input j of the block is row offset + j."""
    return sum(2 + b for b in range(block))


def levels_at(layer: int) -> tuple[int, ...]:
    """The levels of layer ``layer``: the stem's stride-2 map is layer -2 (level -1), its stride-4 map layer
    -1 (level 0); layer l >= 0 reaches levels 0..l+1, since every layer moves at most one level."""
    if layer < 0:
        return (layer + 1,)
    return tuple(range(min(LEVELS, layer + 2)))


def sources(layer: int, level: int) -> tuple[int, ...]:
    """The levels of layer ``layer - 1`` that feed node (layer, level): its own and the two neighbours."""
    return tuple(i for i in (level - 1, level, level + 1) if i in levels_at(layer - 1))


def transition_mask(layers: int) -> torch.Tensor:
    """[layers, LEVELS, MOVES] bool: entry (l, i, k) is the transition from node (l-1, i) to (l, i + k - 1),
    true where both nodes exist. From the stem (l = 0) only stride 4 and 8 are reachable."""
    mask = torch.zeros(layers, LEVELS, MOVES, dtype=torch.bool)
    for layer in range(layers):
        for level in levels_at(layer):
            for source in sources(layer, level):
                mask[layer, source, level - source + 1] = True
    return mask


class ArchParameters(nn.Module):
    """alpha [20 edges, 8 operators] shared by all cells, beta [layers, 4 source levels, 3 moves]."""

    def __init__(self, layers: int, init_scale: float = 1e-3) -> None:
        super().__init__()
        # Small random values (paper: N(0, 1) * 1e-3): near-uniform softmaxes with the ties broken.
        self.alpha = nn.Parameter(torch.randn(EDGES, len(OPERATIONS)) * init_scale)
        self.beta = nn.Parameter(torch.randn(layers, LEVELS, MOVES) * init_scale)
        self.register_buffer("mask", transition_mask(layers), persistent=False)

    def alpha_weights(self) -> torch.Tensor:
        return self.alpha.softmax(dim=-1)

    def beta_weights(self) -> torch.Tensor:
        """beta normalised over each source node's outgoing transitions; 0 where a transition does not exist.

        A large finite fill rather than -inf: a source with no transition (a node
        that does not exist) then gives a finite softmax, zeroed by the mask,
        instead of NaNs that would poison beta's gradient."""
        return self.beta.masked_fill(~self.mask, -1e9).softmax(dim=-1) * self.mask


def _relu_conv_bn(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # align_corners as the fixed network's resampling (TF resize_bilinear), so search and retraining agree.
    return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=True)


def _without_bn_affine(module: nn.Module) -> nn.Module:
    """Every BatchNorm in ``module`` without its learnable scale and shift (as DARTS' search): a candidate
    able to rescale its own output would blur what its alpha weight means."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.BatchNorm2d(child.num_features, eps=child.eps, affine=False))
        else:
            _without_bn_affine(child)
    return module


def _candidate(name: str, channels: int) -> nn.Module:
    op = build_op(name, channels, 1)
    if op_kind(name)[0].endswith("pool"):  # as DARTS: pools get a BN, so their scale matches the convs'
        op = nn.Sequential(op, nn.BatchNorm2d(channels))
    return _without_bn_affine(op)


class MixedOp(nn.Module):
    """One edge: sum_k softmax(alpha)_k * op_k(x) over the 8 operators (zero adds nothing, so it is skipped)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(_candidate(name, channels) for name in OPERATIONS[:-1])

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class SearchCell(nn.Module):
    """A cell of the supernet at one node, fed by one node of the previous layer (h0) and the node two
    layers back (h1). ``move`` is the level change from h0 to this node: +1 (h0 one level finer) is a
    stride-2 conv, -1 (h0 coarser) bilinear upsampling and a 1x1 conv (paper section 4), 0 a 1x1 conv."""

    def __init__(self, h0_channels: int, h1_channels: int, filters: int, move: int) -> None:
        super().__init__()
        self.move = move
        down = move == 1  # h0 one level finer: the stride-2 conv brings it to this node's size
        self.preprocess0 = _relu_conv_bn(h0_channels, filters, 3, 2) if down else _relu_conv_bn(h0_channels, filters)
        self.preprocess1 = _relu_conv_bn(h1_channels, filters)
        self.edges = nn.ModuleList(MixedOp(filters) for _ in range(EDGES))

    def forward(self, h0: torch.Tensor, h1: torch.Tensor, size: Sequence[int], alpha: torch.Tensor) -> torch.Tensor:
        if self.move == -1:
            h0 = _resize(h0, size)
        if tuple(h1.shape[-2:]) != tuple(size):
            h1 = _resize(h1, size)
        states = [self.preprocess0(h0), self.preprocess1(h1)]
        for block in range(BLOCKS):
            row = edge_offset(block)
            states.append(sum(self.edges[row + j](h, alpha[row + j]) for j, h in enumerate(states)))
        return torch.cat(states[2:], dim=1)


class SearchASPP(nn.Module):
    """The search head at one level (paper section 4): ReLU, then 1x1, 3x3 at ``rate`` and image pooling,
    ``channels`` filters each, concatenated, and a 1x1 classifier. The pooling branch has no BN: its map is
    1x1, which batch statistics of one image per process could not normalise."""

    def __init__(self, in_channels: int, channels: int, rate: int, num_classes: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                     nn.ReLU())
        self.conv3x3 = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=rate, dilation=rate, bias=False),
                                     nn.BatchNorm2d(channels), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1), nn.ReLU())
        self.classifier = nn.Conv2d(3 * channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.classifier(torch.cat([self.conv1x1(x), self.conv3x3(x), pooled], dim=1))


class SuperNet(nn.Module):
    """The continuous relaxation of the whole space: ``forward(x, alpha_weights, beta_weights)`` -> logits
    at the input's size, for any size (every resampling goes to the size the strides give)."""

    def __init__(self, num_classes: int, layers: int, filter_multiplier: int, in_channels: int = 3,
                 stem_channels: Sequence[int] = (64, 128), aspp_rate: int = 96) -> None:
        super().__init__()
        self.layers, self.filter_multiplier, self.stem_channels = layers, filter_multiplier, tuple(stem_channels)
        c0, c1 = self.stem_channels
        # The 2-layer stem, each conv stride 2 (paper section 4); its stride-4 map stays pre-ReLU like a
        # cell output, since every cell starts its pre-processing with a ReLU.
        self.stem0 = nn.Sequential(nn.Conv2d(in_channels, c0, 3, 2, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU())
        self.stem1 = nn.Sequential(nn.Conv2d(c0, c1, 3, 2, 1, bias=False), nn.BatchNorm2d(c1))
        self.cells = nn.ModuleDict()
        for layer in range(layers):
            for level in levels_at(layer):
                h1_channels = self.channels(layer - 2, self.h1_level(layer, level))
                for source in sources(layer, level):
                    self.cells[self.key(layer, level, source)] = SearchCell(
                        self.channels(layer - 1, source), h1_channels, filter_multiplier * 2**level, level - source)
        self.heads = nn.ModuleDict({
            str(level): SearchASPP(self.channels(layers - 1, level), self.channels(layers - 1, level),
                                   max(1, aspp_rate // (4 * 2**level)), num_classes)
            for level in levels_at(layers - 1)})  # fmt: skip

    @staticmethod
    def key(layer: int, level: int, source: int) -> str:
        return f"layer{layer}_level{level}_from{source}"

    def channels(self, layer: int, level: int) -> int:
        """Channels of the state at (layer, level): B * F * s / 4 for a node at stride s, or the stem's."""
        if layer < 0:
            return self.stem_channels[layer + 2]
        return BLOCKS * self.filter_multiplier * 2**level

    @staticmethod
    def h1_level(layer: int, level: int) -> int:
        """The level of layer-2 whose node is h1 of (layer, level): the same, else the nearest that exists
        (the stem's maps for the first two layers; layer l-2 lacks the coarsest levels of layer l)."""
        return min(levels_at(layer - 2), key=lambda k: abs(k - level))

    def forward(self, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        sizes = [tuple(s1.shape[-2:])]
        for _ in range(1, LEVELS):  # a stride-2 3x3 conv with padding 1 takes d to ceil(d / 2)
            sizes.append(tuple(math.ceil(d / 2) for d in sizes[-1]))
        prev_prev, prev = {-1: s0}, {0: s1}
        for layer in range(self.layers):
            nodes = {}
            for level in levels_at(layer):
                h1 = prev_prev[self.h1_level(layer, level)]
                nodes[level] = sum(
                    beta[layer, source, level - source + 1]
                    * self.cells[self.key(layer, level, source)](prev[source], h1, sizes[level], alpha)
                    for source in sources(layer, level))
            prev_prev, prev = prev, nodes
        size = x.shape[-2:]
        return sum(_resize(self.heads[str(level)](h), size) for level, h in prev.items())
