"""Pictures of a search from its ``arch.jsonl``: how alpha and beta evolved, and the decoded path.

* ``alpha.png``: one panel per edge of the cell (20), the softmax weight of
  each operator over the epochs;
* ``beta.png``: one panel per layer, the normalised beta of each transition;
* ``trellis.png``: the network-level trellis of the last epoch, every
  transition drawn as thick as its beta, the Viterbi path on top.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from imseg.models.autodeeplab import BLOCKS, LEVELS
from imseg.search.space import edge_offset, levels_at, sources


def read_arch_log(run_dir: str | Path) -> list[dict]:
    """The entries of ``arch.jsonl``, the last one of each epoch (a resumed search appends), by epoch."""
    path = Path(run_dir) / "arch.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} an imseg search folder?")
    entries = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not valid JSON: {e}") from e
            entries[entry["epoch"]] = entry
    if not entries:
        raise ValueError(f"{path} has no finished epoch yet")
    return [entries[e] for e in sorted(entries)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_alpha(entries: list[dict], out: Path) -> Path:
    plt = _pyplot()
    epochs, operations = [e["epoch"] for e in entries], entries[-1]["operations"]
    inputs = ["h0", "h1"] + [f"B{b + 1}" for b in range(BLOCKS)]
    fig, axes = plt.subplots(BLOCKS, BLOCKS + 1, figsize=(3 * (BLOCKS + 1), 2.2 * BLOCKS), sharex=True, sharey=True)
    for block in range(BLOCKS):
        for j in range(BLOCKS + 1):
            ax = axes[block][j]
            if j >= 2 + block:
                ax.axis("off")  # block b has only 2 + b inputs
                continue
            row = edge_offset(block) + j
            for k, name in enumerate(operations):
                ax.plot(epochs, [e["alpha"][row][k] for e in entries], label=name, lw=1.2,
                        ls="--" if name == "zero" else "-")
            ax.set_title(f"{inputs[j]} -> B{block + 1}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.supxlabel("epoch")
    fig.supylabel("softmax(alpha)")
    return _save(plt, fig, out)


def plot_beta(entries: list[dict], out: Path) -> Path:
    plt = _pyplot()
    epochs, layers = [e["epoch"] for e in entries], len(entries[-1]["beta"])
    cols = min(4, layers)
    rows = math.ceil(layers / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.5 * cols, 0.8 + 2.6 * rows), sharex=True, sharey=True,
                             squeeze=False)
    for layer in range(layers):
        ax = axes[layer // cols][layer % cols]
        for level in levels_at(layer):
            for source in sources(layer, level):
                values = [e["beta"][layer][source][level - source + 1] for e in entries]
                ax.plot(epochs, values, lw=1.2, label=f"{4 * 2**source}->{4 * 2**level}")
        ax.set_title(f"into layer {layer}", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        ax.grid(alpha=0.3)
    for k in range(layers, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.supxlabel("epoch")
    fig.supylabel("beta, normalised per source")
    return _save(plt, fig, out)


def plot_trellis(entry: dict, out: Path) -> Path:
    """Layer -1 is the stem (stride 4); transitions as thick as their beta, the decoded path in red."""
    plt = _pyplot()
    beta, path = entry["beta"], entry["path"]
    layers = len(beta)
    fig, ax = plt.subplots(figsize=(1 + 0.8 * (layers + 1), 3.5))
    for layer in range(layers):
        for level in levels_at(layer):
            for source in sources(layer, level):
                weight = beta[layer][source][level - source + 1]
                ax.plot([layer - 1, layer], [source, level], color="tab:blue", lw=0.3 + 5 * weight, alpha=0.6)
            ax.plot(layer, level, "o", color="tab:gray", ms=4)
    ax.plot(range(-1, layers), [0, *path], color="tab:red", lw=2.5, marker="o", ms=6, label="decoded path")
    ax.set_yticks(range(LEVELS), [f"OS{4 * 2**level}" for level in range(LEVELS)])
    ax.set_xticks(range(-1, layers), ["stem", *map(str, range(layers))])
    ax.invert_yaxis()  # stride 4 on top, as the paper draws it
    ax.set(xlabel="layer", title=f"epoch {entry['epoch']}: path {path}")
    ax.legend(fontsize=8, loc="lower right")
    return _save(plt, fig, out)


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_search(run_dir: str | Path) -> list[Path]:
    """Write alpha.png, beta.png and trellis.png into ``run_dir``; their paths."""
    run_dir = Path(run_dir)
    entries = read_arch_log(run_dir)
    return [plot_alpha(entries, run_dir / "alpha.png"), plot_beta(entries, run_dir / "beta.png"),
            plot_trellis(entries[-1], run_dir / "trellis.png")]
