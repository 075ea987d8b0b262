"""torchrun on this CPU (gloo): 2 processes train and evaluate like 1.

The model is the original U-Net without BatchNorm or dropout, and the
synthetic data has no ignored pixels (and scales >= 1, so crops need no
padding): BatchNorm statistics and per-process
loss means would otherwise differ legitimately between 1 and 2 processes
(SyncBatchNorm exists only on GPUs).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from imseg.engine.checkpoint import load_checkpoint
from tests.helpers import run_cli

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def _synthetic(root, n=9, h=32, w=48):
    """Images of two coloured rectangles on a background; the mask says which is which."""
    g = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((h, w), np.uint8)
        for cls in (1, 2):
            t, l = g.integers(0, h - 10), g.integers(0, w - 12)
            mask[t : t + 10, l : l + 12] = cls
        image = np.stack([mask * 100 + g.integers(0, 30, (h, w)) for _ in range(3)], -1).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:02d}.png")
    return root


def _config(root, out_dir):
    return {
        "model": {"name": "unet_original", "args": {"base_channels": 4, "dropout": 0.0, "batch_norm": False}},
        "data": {"name": "folder", "root": str(root), "class_names": ["bg", "a", "b"], "crop_size": [32, 48],
                 "scale_range": [1.0, 1.25], "batch_size": 4, "num_workers": 0},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 2, "out_dir": str(out_dir), "progress": False, "log_every": 1},
    }


def _run(args, env_extra=None, timeout=300):
    """``imseg ARGS`` as a new process (what torchrun and ``--nproc`` need)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "imseg.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _in_process(args):
    """``imseg ARGS`` in this process: the one-process reference runs need no process of their own (each
    new one costs 5-8 s of start-up on a 2-core CPU)."""
    code, _, err = run_cli(*args)
    assert code == 0, err[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    root = _synthetic(tmp / "data")
    for name in ("one", "two"):
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(_config(root, tmp / name)))
    _in_process(["train", tmp / "one.yaml"])
    _run(["train", tmp / "two.yaml", "--nproc", "2"])  # the user's command: imseg starts torchrun itself
    return tmp


def _losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e["loss"] for e in map(json.loads, lines) if e["type"] == "train"]


def test_two_processes_follow_the_one_process_loss_curve_and_weights(runs):
    one, two = _losses(runs / "one"), _losses(runs / "two")
    assert len(one) == len(two) == 4  # 9 images, global batch 4: 2 steps x 2 epochs
    np.testing.assert_allclose(two, one, rtol=1e-4)
    a = load_checkpoint(runs / "one" / "checkpoints" / "last.pt")["state_dict"]
    b = load_checkpoint(runs / "two" / "checkpoints" / "last.pt")["state_dict"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def test_sharded_evaluation_gives_exactly_the_one_process_confusion_matrix(runs):
    ckpt = runs / "one" / "checkpoints" / "last.pt"
    _in_process(["eval", ckpt, "--split", "val", "--out", runs / "eval1.json"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "imseg.cli",
           "eval", str(ckpt), "--split", "val", "--out", str(runs / "eval2.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one = json.loads((runs / "eval1.json").read_text())
    two = json.loads((runs / "eval2.json").read_text())
    assert one["images"] == two["images"] == 9  # odd: shards of 5 and 4, nothing doubled or dropped
    assert two["processes"] == 2
    assert one["confusion_matrix"] == two["confusion_matrix"]
    assert one["mean_bf1"] == pytest.approx(two["mean_bf1"], abs=1e-12)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 16 s; the one-node two-process runs above check the same synchronisation
def test_two_nodes_on_loopback_agree_with_one_process(runs):
    """Two torchrun launches with --nnodes 2 (one process each) meet on 127.0.0.1 and train as one."""
    root = runs / "data"
    cfg = runs / "nodes.yaml"
    cfg.write_text(yaml.safe_dump(_config(root, runs / "nodes")))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
             "-m", "imseg.cli", "train", str(cfg)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    np.testing.assert_allclose(_losses(runs / "nodes"), _losses(runs / "one"), rtol=1e-4)
    a = load_checkpoint(runs / "one" / "checkpoints" / "last.pt")["state_dict"]
    b = load_checkpoint(runs / "nodes" / "checkpoints" / "last.pt")["state_dict"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ collectives per optimiser step

COUNT_WORKER = Path(__file__).with_name("ddp_count_worker.py")


def _torchrun_two(*args) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _accum_config(runs, name, accum):
    """9 images, global batch 2 (one per process), no validation (its collectives are not steps')."""
    cfg = _config(runs / "data", runs / name)
    cfg["data"].update(batch_size=2, val_split="")
    cfg["train"]["grad_accum"] = accum
    path = runs / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def counted(runs):
    """2-process runs with grad_accum 1 and 4, their collectives counted per process (tests/ddp_count_worker.py)."""
    counts = {}
    for accum in (1, 4):
        name = f"count{accum}"
        _torchrun_two(COUNT_WORKER, _accum_config(runs, name, accum), runs / name)
        counts[accum] = [json.loads((runs / name / f"counts-{rank}.json").read_text()) for rank in (0, 1)]
    return counts


def test_accumulation_reduces_gradients_once_per_optimiser_step(counted):
    assert [counted[1][0]["steps"], counted[4][0]["steps"]] == [8, 2]  # 4 batches an epoch, 2 epochs
    for ranks in counted.values():
        for c in ranks:
            assert c["all_reduce"] == c["steps"]  # the loss and the finite flag travel in one collective
    buckets = {accum: ranks[0]["gradient_buckets"] / ranks[0]["steps"] for accum, ranks in counted.items()}
    # Without no_sync() each of the 4 micro-batches' backward would reduce every bucket: 4x as many.
    assert buckets[4] == buckets[1] >= 1, buckets


def test_two_processes_accumulating_follow_one_process(runs, counted):
    _in_process(["train", _accum_config(runs, "accum-one", 4)])
    np.testing.assert_allclose(_losses(runs / "count4"), _losses(runs / "accum-one"), rtol=1e-4)
    a = load_checkpoint(runs / "accum-one" / "checkpoints" / "last.pt")["state_dict"]
    b = load_checkpoint(runs / "count4" / "checkpoints" / "last.pt")["state_dict"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # 30 s; tests/test_finetune.py checks freezing in one process
def test_a_frozen_then_unfrozen_encoder_trains_under_two_processes_as_under_one(tmp_path):
    """The DDP wrapper is rebuilt when the encoder unfreezes: were it kept, the encoder's gradients
    would not be averaged across processes and rank 0's weights would drift from the one-process run."""
    root = _synthetic(tmp_path / "data")
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        cfg = _config(root, tmp_path / name)
        cfg["model"] = {"name": "lraspp", "args": {"encoder": "mobilenet_v3_small"}}
        # BatchNorm in eval mode: batch statistics would differ between 4 images and two halves of 2.
        cfg["train"].update({"freeze_encoder_epochs": 1, "freeze_bn_stats": True})
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        proc = _run(["train", tmp_path / f"{name}.yaml", *extra])
        assert "epoch 2: encoder unfrozen" in proc.stdout
    a = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["state_dict"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
