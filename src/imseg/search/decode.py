"""From the relaxed search space back to one architecture: the cell from alpha, the path from beta.

* Cell (paper section 3.3, as DARTS): each block keeps its 2 strongest
  predecessors, strength = the largest softmax(alpha) of a non-zero operator
  on that edge, and on each the argmax non-zero operator.
* Path: Viterbi decoding over beta, the path of largest product of
  normalised betas from the stem (stride 4) through one node per layer,
  moving at most one level per layer (so the first layer is at stride 4 or 8).

Plus the baseline the benchmark needs, a *random* architecture from the same
space: a uniform genotype and a path drawn uniformly from all valid paths.
"""
from __future__ import annotations

import math
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from imseg.models.autodeeplab import BLOCKS, LEVELS, OPERATIONS, Architecture, check_architecture
from imseg.search.space import edge_offset, levels_at, sources

USABLE = OPERATIONS[:-1]  # every operator but "zero" (the last)


def decode_cell(alpha: torch.Tensor) -> tuple[tuple[str, int], ...]:
    """The genotype of ``alpha`` [20, 8] (softmax weights, rows = edges, columns = OPERATIONS)."""
    if tuple(alpha.shape) != (edge_offset(BLOCKS), len(OPERATIONS)):
        raise ValueError(f"alpha must be [{edge_offset(BLOCKS)} edges, {len(OPERATIONS)} operators], "
                         f"got {list(alpha.shape)}")
    genotype = []
    for block in range(BLOCKS):
        rows = alpha[edge_offset(block): edge_offset(block) + 2 + block, :-1].tolist()  # zero left out
        strength = [max(row) for row in rows]
        # Ties go to the earlier input, so decoding is a function of alpha alone.
        strongest = sorted(range(len(rows)), key=lambda j: (-strength[j], j))[:2]
        for j in strongest:
            genotype.append((USABLE[rows[j].index(max(rows[j]))], j))
    return tuple(genotype)


def viterbi_path(beta: torch.Tensor) -> tuple[int, ...]:
    """The most probable path through ``beta`` [layers, 4, 3] (normalised: entry (l, i, k) is the weight of
    node (l-1, i) -> (l, i + k - 1), the stem being layer -1 at level 0); one level per layer."""
    if beta.ndim != 3 or tuple(beta.shape[1:]) != (LEVELS, 3):
        raise ValueError(f"beta must be [layers, {LEVELS} levels, 3 moves], got {list(beta.shape)}")
    weights = beta.double().tolist()
    score = {0: 0.0}  # log-probability of the best path to each node of the previous layer (the stem)
    back: list[dict[int, int]] = []
    for layer, table in enumerate(weights):
        best, pointer = {}, {}
        for level in levels_at(layer):
            # Ties go to the finer source level; log of a vanishing weight stays finite so a path always exists.
            options = [(score[i] + math.log(max(table[i][level - i + 1], 1e-300)), -i) for i in sources(layer, level)]
            top = max(options)
            best[level], pointer[level] = top[0], -top[1]
        score = best
        back.append(pointer)
    level = max(score, key=lambda j: (score[j], -j))
    path = [level]
    for pointer in reversed(back[1:]):
        level = pointer[level]
        path.append(level)
    return tuple(reversed(path))


def decode_architecture(alpha: torch.Tensor, beta: torch.Tensor, filter_multiplier: int) -> Architecture:
    """The discrete architecture of normalised ``alpha`` and ``beta``, for F = ``filter_multiplier``."""
    return check_architecture(decode_cell(alpha), viterbi_path(beta), filter_multiplier)


def count_paths(layers: int) -> int:
    """How many valid paths ``layers`` layers have (paper: 2.9e4 for 12)."""
    return sum(_completions(layers)[0][level] for level in levels_at(0))


def _completions(layers: int) -> list[dict[int, int]]:
    """completions[l][j]: the valid ways to finish a path that is at level j in layer l."""
    table: list[dict[int, int]] = [{} for _ in range(layers)]
    table[-1] = {level: 1 for level in levels_at(layers - 1)}
    for layer in range(layers - 2, -1, -1):
        table[layer] = {j: sum(table[layer + 1].get(k, 0) for k in (j - 1, j, j + 1)) for j in levels_at(layer)}
    return table


def random_path(layers: int, rng: random.Random) -> tuple[int, ...]:
    """A path drawn uniformly from all valid ones: each step weighted by the paths it leaves open."""
    table = _completions(layers)
    path: list[int] = []
    for layer in range(layers):
        options = [j for j in levels_at(layer) if not path or abs(j - path[-1]) <= 1]
        path.append(rng.choices(options, weights=[table[layer][j] for j in options])[0])
    return tuple(path)


def random_genotype(rng: random.Random) -> tuple[tuple[str, int], ...]:
    """Per block 2 distinct inputs and, on each, a non-zero operator, all uniform (what decoding can yield)."""
    genotype = []
    for block in range(BLOCKS):
        for source in rng.sample(range(2 + block), 2):
            genotype.append((rng.choice(USABLE), source))
    return tuple(genotype)


def random_architecture(layers: int, filter_multiplier: int, seed: int = 0) -> Architecture:
    """A random architecture of the space (the benchmark's baseline), reproducible from ``seed``."""
    rng = random.Random(seed)
    return check_architecture(random_genotype(rng), random_path(layers, rng), filter_multiplier)


def write_architecture(arch: Architecture, path: str | Path, **extra: Any) -> Path:
    """Write ``arch`` as a JSON file ``create_model("autodeeplab", architecture=path)`` reads, atomically
    (a temporary file renamed over it), so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(arch.to_json(**extra))
    os.chmod(tmp, 0o644)  # mkstemp makes it private; an architecture file is as readable as any
    os.replace(tmp, path)
    return path


def genotype_lines(genotype: Sequence[tuple[str, int]]) -> list[str]:
    """The genotype as the module docs write it: ``B1 = atrous_5x5(h1) + sep_3x3(h0)``."""
    names = ["h0", "h1"] + [f"B{b + 1}" for b in range(BLOCKS)]
    return [f"B{b + 1} = {genotype[2 * b][0]}({names[genotype[2 * b][1]]}) + "
            f"{genotype[2 * b + 1][0]}({names[genotype[2 * b + 1][1]]})" for b in range(BLOCKS)]
