"""A torchrun worker that trains while counting collectives (run by tests/test_distributed.py).

``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_count_worker.py CONFIG OUT_DIR`` trains as
``imseg train CONFIG`` would and writes ``OUT_DIR/counts-<rank>.json``: the calls of
``torch.distributed.all_reduce`` (imseg's own collectives) and the gradient buckets DDP reduced, counted by
a comm hook that reduces them exactly as DDP's default does (sum, then divide by the world size).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from imseg.config import load_config
from imseg.engine import finetune
from imseg.engine.train import train

counts = {"all_reduce": 0, "gradient_buckets": 0}
_all_reduce = dist.all_reduce


def _counting_all_reduce(*args, **kwargs):
    counts["all_reduce"] += 1
    return _all_reduce(*args, **kwargs)


def _counting_hook(state, bucket):
    counts["gradient_buckets"] += 1
    tensor = bucket.buffer().div_(dist.get_world_size())
    return _all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])


class CountingDDP(finetune.DistributedDataParallel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_comm_hook(None, _counting_hook)


def main(config: str, out_dir: str) -> None:
    dist.all_reduce = _counting_all_reduce
    finetune.DistributedDataParallel = CountingDDP  # wrap_for_training builds the wrapper there
    summary = train(load_config(config), log=lambda message: None)
    counts["steps"] = summary["total_steps"]
    Path(out_dir, f"counts-{os.environ['RANK']}.json").write_text(json.dumps(counts))


if __name__ == "__main__":
    main(*sys.argv[1:])
