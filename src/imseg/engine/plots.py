"""Training curves from a run's metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} an imseg run folder?")
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not valid JSON: {e}") from e
    return entries


def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss per epoch and validation mIoU per epoch, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A resumed run appends to the log: keep the last entry of each epoch.
    epochs = {e["epoch"]: e for e in read_log(run_dir) if e.get("type") == "epoch"}
    if not epochs:
        raise ValueError(f"{run_dir}/metrics.jsonl has no finished epoch yet")
    xs = sorted(epochs)
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(xs, [epochs[x]["train_loss"] for x in xs], marker="o", ms=3)
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="training loss")
    val = [x for x in xs if epochs[x].get("val_mIoU") is not None]
    ax_miou.plot(val, [100 * epochs[x]["val_mIoU"] for x in val], marker="o", ms=3, color="tab:green")
    ax_miou.set(xlabel="epoch", ylabel="mIoU (%)", title="validation mIoU")
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_path = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
