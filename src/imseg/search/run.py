"""Setting up a search: the data split in two halves, the supernet, alpha / beta, their optimisers; and
its checkpoints (written atomically, read weights-only, resumed bit-exactly, as training's).

Like training (imseg/engine/run_setup.py, run_state.py), everything a step
reads is either a function of (seed, epoch, index) (sample order, the
augmentation) or in the checkpoint (weights, alpha, beta, both optimisers,
the schedule, the position in the epoch, the RNG), so "2 epochs" and
"1 epoch, resume, 1 epoch" give identical alpha and beta.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from imseg.config import ConfigError
from imseg.data import DataError, build_dataset
from imseg.engine import distributed
from imseg.engine.checkpoint import CheckpointError, find_resume_checkpoint, load_checkpoint, save_checkpoint
from imseg.engine.data_fit import preprocessing_for
from imseg.engine.finetune import wrap_for_training
from imseg.engine.run_folder import check_run_folder
from imseg.engine.runtime import seed_everything, seed_worker, set_threads
from imseg.engine.sampling import GlobalBatchSampler
from imseg.models.autodeeplab import AUTODEEPLAB_PREPROCESSING
from imseg.preprocessing import Preprocessing
from imseg.search.config import SearchConfig
from imseg.search.space import ArchParameters, SuperNet

CHECKPOINT_KIND = "imseg-search"
# What a search writes beside training's files (run_folder.RUN_FILES); --overwrite deletes these too.
SEARCH_FILES = ("arch.jsonl", "found.json", "alpha.png", "beta.png", "trellis.png")


@dataclass
class SearchRun:
    """One search: what `build_search_run` makes, the loop advances and a checkpoint saves."""

    cfg: SearchConfig
    ctx: distributed.Context
    net: SuperNet  # the weights w
    train_net: nn.Module  # ``net`` in DistributedDataParallel under torchrun (the weight steps call it)
    arch: ArchParameters  # alpha and beta, the same on every process
    dataset: Any  # the training split; both halves index into it
    halves: tuple[list[int], list[int]]  # indices for the weights, for the architecture
    samplers: tuple[GlobalBatchSampler, GlobalBatchSampler]
    generators: tuple[torch.Generator, torch.Generator]
    loaders: tuple[DataLoader, DataLoader]
    preprocessing: Preprocessing
    weight_optimizer: torch.optim.Optimizer
    arch_optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    # Where the search stands: zero for a fresh one, read from the checkpoint on resume.
    start_epoch: int = 0
    start_batch: int = 0
    step: int = 0
    rng_state: torch.Tensor | None = None

    @property
    def epochs(self) -> int:
        return self.cfg.search.epochs

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def end_epoch(self) -> int:
        """Where this invocation stops: the last epoch, or earlier with search.stop_after."""
        return min(self.epochs, self.cfg.search.stop_after or self.epochs)

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.search.out_dir)

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"


def split_halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Two disjoint halves of ``n`` samples drawn by ``seed`` (paper: trainA for w, trainB for alpha, beta)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[: n // 2]), sorted(order[n // 2:])


def build_search_run(cfg: SearchConfig, ctx: distributed.Context, log: Callable[[str], None]) -> SearchRun:
    """Everything the search loop needs, from ``cfg`` (data first: bad data fails before any model is built)."""
    set_threads(cfg.search.threads)
    dataset = build_dataset(cfg.data, cfg.data.train_split, train=True)
    halves = split_halves(len(dataset), cfg.search.seed)
    batch = cfg.data.batch_size
    if min(len(h) for h in halves) < batch:
        raise DataError(f"the training split has {len(dataset)} images: each half (one for the weights, one for "
                        f"the architecture) needs at least data.batch_size={batch}")
    seed_everything(cfg.search.seed)  # the initial weights, alpha and beta come from this seed
    in_channels = int(dataset.num_channels)
    net = SuperNet(dataset.num_classes, cfg.space.layers, cfg.space.filter_multiplier, in_channels,
                   cfg.space.stem_channels, cfg.space.aspp_rate).to(ctx.device)
    arch = ArchParameters(cfg.space.layers, cfg.arch.init_scale).to(ctx.device)
    samplers, generators, loaders = _loaders(cfg, ctx, dataset, halves)
    weights, adam = cfg.weights, cfg.arch
    weight_optimizer = torch.optim.SGD(net.parameters(), lr=weights.lr, momentum=weights.momentum,
                                       weight_decay=weights.weight_decay)
    steps_per_epoch = min(len(h) for h in halves) // batch
    return SearchRun(
        cfg=cfg, ctx=ctx, net=net, train_net=wrap_for_training(net, ctx), arch=arch, dataset=dataset,
        halves=halves, samplers=samplers, generators=generators, loaders=loaders,
        preprocessing=preprocessing_for(None, AUTODEEPLAB_PREPROCESSING.for_channels(in_channels), in_channels,
                                        dataset, log),
        weight_optimizer=weight_optimizer,
        arch_optimizer=torch.optim.Adam(arch.parameters(), lr=adam.lr, betas=tuple(adam.betas),
                                        weight_decay=adam.weight_decay),
        # Cosine from weights.lr to weights.lr_min over every step of the search (paper: 0.025 -> 0.001).
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(
            weight_optimizer, T_max=steps_per_epoch * cfg.search.epochs, eta_min=weights.lr_min),
        amp_dtype=torch.bfloat16 if cfg.search.amp == "bf16" else None, steps_per_epoch=steps_per_epoch,
    )


def _loaders(cfg: SearchConfig, ctx: distributed.Context, dataset, halves: tuple[list[int], list[int]]):
    """One sampler, generator and loader per half; each process takes its slice of every global batch."""
    samplers, generators, loaders = [], [], []
    dataset.set_augmentation_seed(cfg.search.seed)
    for k, half in enumerate(halves):
        # Another seed per half, so the two do not visit their samples in lockstep order.
        sampler = GlobalBatchSampler(len(half), cfg.data.batch_size, seed=cfg.search.seed * 2 + k,
                                     rank=ctx.rank, world_size=ctx.world_size)
        generator = torch.Generator()
        loaders.append(DataLoader(Subset(dataset, half), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                  worker_init_fn=seed_worker, generator=generator,
                                  pin_memory=ctx.device.type == "cuda"))
        samplers.append(sampler)
        generators.append(generator)
    return tuple(samplers), tuple(generators), tuple(loaders)


# --------------------------------------------------------------------------- checkpoints


def checkpoint_state(run: SearchRun, epoch_done: int, batch_in_epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """Everything a resumed search reads (plain tensors and values: it loads with weights_only=True)."""
    return {
        "kind": CHECKPOINT_KIND, "config": run.cfg.to_dict(), "num_classes": run.dataset.num_classes,
        "class_names": list(run.dataset.class_names), "network": run.net.state_dict(), "arch": run.arch.state_dict(),
        "weight_optimizer": run.weight_optimizer.state_dict(), "arch_optimizer": run.arch_optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "epoch": epoch_done, "batch_in_epoch": batch_in_epoch,
        "global_step": run.step, "total_steps": run.total_steps, "rng_state": torch.get_rng_state(),
        "metrics": metrics,
    }


def save_search_checkpoint(run: SearchRun, path: Path, epoch_done: int, batch_in_epoch: int,
                           metrics: dict[str, Any]) -> None:
    """Write `checkpoint_state` atomically from the main process (every process holds the same state)."""
    if run.ctx.is_main:
        save_checkpoint(checkpoint_state(run, epoch_done, batch_in_epoch, metrics), path)


def resume_point(cfg: SearchConfig, resume: str | Path | None, overwrite: bool, ctx: distributed.Context,
                 log: Callable[[str], None]) -> str | Path | None:
    """The checkpoint to resume from (``"auto"``: the newest readable one, None: fresh), as `imseg train`:
    a fresh start in a folder holding a search is refused unless ``overwrite`` deletes it."""
    out_dir = Path(cfg.search.out_dir)
    if resume is None and distributed.elastic_restart_count() > 0:
        resume = "auto"  # torchrun restarted us after a failure: continue, don't start over
    if resume is None and check_run_folder(out_dir, overwrite, ctx.is_main):
        if ctx.is_main:
            for name in SEARCH_FILES:
                (out_dir / name).unlink(missing_ok=True)
        log(f"--overwrite: deleted the earlier search's checkpoints and logs in {out_dir}")
    if resume == "auto":
        resume = find_resume_checkpoint(out_dir)
        log(f"--resume auto: {'continuing from ' + str(resume) if resume else 'no checkpoint yet, starting fresh'}")
    return resume


def read_search_state(path: str | Path, run: SearchRun) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be a resume point of a search over the same space and classes."""
    state = load_checkpoint(path)
    if state.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is not a search checkpoint (imseg search writes them in "
                              f"<out_dir>/checkpoints); a training checkpoint cannot resume a search")
    space, here = state["config"]["space"], run.cfg.to_dict()["space"]
    if space != here or state["num_classes"] != run.dataset.num_classes:
        raise CheckpointError(f"{path} searched space {space} with {state['num_classes']} classes, but the config "
                              f"gives space {here} and the data {run.dataset.num_classes} classes")
    if state["config"]["search"]["epochs"] != run.epochs or state["total_steps"] != run.total_steps:
        raise ConfigError(f"{path} was a search of {state['config']['search']['epochs']} epochs of "
                          f"{state['total_steps'] // max(1, state['config']['search']['epochs'])} steps; the config "
                          f"asks for {run.epochs} of {run.steps_per_epoch}: the LR schedule would not continue")
    return state


def restore(run: SearchRun, state: dict[str, Any], path: str | Path, log: Callable[[str], None]) -> None:
    """Put ``run`` back where the checkpoint ``state`` (read from ``path``) left it."""
    run.net.load_state_dict(state["network"])
    run.arch.load_state_dict(state["arch"])
    run.weight_optimizer.load_state_dict(state["weight_optimizer"])
    run.arch_optimizer.load_state_dict(state["arch_optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.start_epoch, run.start_batch = state["epoch"], state["batch_in_epoch"]
    run.step, run.rng_state = state["global_step"], state["rng_state"]
    log(f"resumed from {path} at epoch {run.start_epoch + 1}, batch {run.start_batch} (step {run.step})")
