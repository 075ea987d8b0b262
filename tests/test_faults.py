"""A run killed at any moment (even mid-checkpoint) resumes to the same weights."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from imseg.engine.checkpoint import load_checkpoint
from tests.helpers import run_cli
from tests.test_distributed import _config, _run, _synthetic


def _fault_config(root, out_dir, **train):
    cfg = _config(root, out_dir)
    cfg["data"]["batch_size"] = 2
    cfg["train"].update({"checkpoint_every_steps": 1, "keep_checkpoints": 2, **train})
    return cfg


def _train_lines(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"type": "train"' in line)


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["state_dict"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    root = _synthetic(tmp / "data", n=17)
    cfg = tmp / "ref.yaml"
    cfg.write_text(yaml.safe_dump(_fault_config(root, tmp / "ref")))
    _run(["train", cfg])
    return tmp, root


def test_sigkill_at_a_random_step_then_resume_auto_matches_an_uninterrupted_run(reference):
    tmp, root = reference
    run = tmp / "killed"
    cfg = tmp / "killed.yaml"
    cfg.write_text(yaml.safe_dump(_fault_config(root, run)))
    kill_at = random.Random(os.getpid()).randint(2, 14)  # of 16 steps
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "imseg.cli", "train", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _train_lines(run) < kill_at and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the checkpoint may be mid-write
    proc.wait()
    for path in (run / "checkpoints").glob("*.pt"):
        load_checkpoint(path)  # never a truncated checkpoint under a real name
    _run(["train", cfg, "--resume", "auto"])
    expected, got = _weights(tmp / "ref"), _weights(run)
    for key in expected:
        assert torch.equal(got[key], expected[key]), f"{key} differs after a kill at step {kill_at}"
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"type": "train"' in line]
    assert len(losses) >= 16


def test_a_corrupt_newest_checkpoint_is_skipped(reference):
    tmp, root = reference
    run = tmp / "corrupt"
    cfg = tmp / "corrupt.yaml"
    cfg.write_text(yaml.safe_dump(_fault_config(root, run, stop_after=1)))
    _run(["train", cfg])  # epoch 1 of 2: last.pt is the newest checkpoint
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    cfg.write_text(yaml.safe_dump(_fault_config(root, run)))  # the whole schedule this time
    proc = _run(["train", cfg, "--resume", "auto"])
    assert "skipping unreadable checkpoint" in proc.stderr and "last.pt" in proc.stderr
    expected, got = _weights(tmp / "ref"), _weights(run)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_nonfinite_loss_stops_naming_the_step(tmp_path):
    root = _synthetic(tmp_path / "data")
    cfg = _config(root, tmp_path / "nan")
    cfg["optim"]["lr"] = 1e30  # diverges within a step or two
    cfg["train"]["epochs"] = 3
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from imseg.engine.loop import NonFiniteLoss

    with pytest.raises(NonFiniteLoss, match="non-finite loss .* optimiser step"):  # names the step that diverged
        run_cli("train", path)  # in this process: a new one would cost 5-8 s of start-up


def test_torchrun_elastic_restart_resumes_from_the_last_checkpoint(reference):
    """torchrun --max-restarts 1: the worker is killed, torchrun restarts it, and it resumes by itself."""
    tmp, root = reference
    run = tmp / "elastic"
    cfg = tmp / "elastic.yaml"
    cfg.write_text(yaml.safe_dump(_fault_config(root, run)))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    agent = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "--max-restarts=1",
         "-m", "imseg.cli", "train", str(cfg)],  # note: no --resume
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while _train_lines(run) < 6 and agent.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    workers = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "no torchrun worker found"
    for pid in workers:
        os.kill(int(pid), signal.SIGKILL)
    output = agent.communicate(timeout=300)[0]
    assert agent.returncode == 0, output[-3000:]
    assert "--resume auto: continuing from" in output
    expected, got = _weights(tmp / "ref"), _weights(run)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
