"""The bilevel search loop (first-order DARTS, as Auto-DeepLab), readable in one sitting.

Each step takes one batch from each half of the training split:

1. a *weight step* on the weights half: cross-entropy of the supernet with
   alpha and beta held fixed, SGD on the network weights w (DDP averages
   their gradients over processes, as in training);
2. from ``arch.start_epoch`` on, an *architecture step* on the other half:
   the same loss with w held fixed, Adam on alpha and beta. First order:
   the gradient is taken at the current w, not through a virtual w step.
   Its gradients are averaged over processes by one all-reduce, so every
   process takes the same Adam step and alpha / beta stay identical.

After every epoch alpha, beta and their decoding go to ``arch.jsonl`` and
the plots; at the end the decoded architecture is ``found.json``, which
``create_model("autodeeplab", architecture="found.json")`` builds.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from imseg.engine import distributed
from imseg.engine.checkpoint import prune_checkpoints
from imseg.engine.loop import NonFiniteLoss, epoch_seed
from imseg.engine.progress import progress
from imseg.engine.run_folder import open_run_logs
from imseg.engine.run_log import RunLog
from imseg.engine.runtime import autocast, seed_everything
from imseg.models.autodeeplab import OPERATIONS, Architecture
from imseg.search.config import SearchConfig, check_search_config, save_search_config
from imseg.search.decode import decode_architecture, genotype_lines, write_architecture
from imseg.search.run import (SearchRun, build_search_run, read_search_state, restore, resume_point,
                              save_search_checkpoint)


def _print(message: str) -> None:
    print(message, flush=True)


def _silent(message: str) -> None:
    pass  # processes other than the main one: one copy of every line is enough


@dataclass
class SearchStats:
    weight_loss_sum: float = 0.0
    arch_loss_sum: float = 0.0
    steps: int = 0
    arch_steps: int = 0
    seconds: float = 0.0

    @property
    def weight_loss(self) -> float:
        return self.weight_loss_sum / max(1, self.steps)

    @property
    def arch_loss(self) -> float | None:
        return self.arch_loss_sum / self.arch_steps if self.arch_steps else None


def search(cfg: SearchConfig, resume: str | Path | None = None, overwrite: bool = False,
           log: Callable[[str], None] = _print) -> dict[str, Any]:
    """Search per ``cfg``; returns a summary with the decoded architecture and, once the last epoch is done,
    the path of ``found.json``. ``resume``: a checkpoint, or ``"auto"`` (the newest in the run folder)."""
    cfg = check_search_config(copy.deepcopy(cfg))
    ctx = distributed.setup(cfg.search.device)
    logs = RunLog()
    try:
        log = log if ctx.is_main else _silent
        resume = resume_point(cfg, resume, overwrite, ctx, log)
        run = build_search_run(cfg, ctx, log)
        if resume is not None:
            restore(run, read_search_state(resume, run), resume, log)
        logs = _open_run_folder(run, log)
        return _search_epochs(run, logs, log)
    finally:
        logs.close()  # even on Ctrl-C or an error, which propagate
        distributed.teardown(ctx)


def _open_run_folder(run: SearchRun, log: Callable[[str], None]) -> RunLog:
    return open_run_logs(run.ctx.is_main, run.out_dir, run.ckpt_dir, lambda path: save_search_config(run.cfg, path), log)


def _search_epochs(run: SearchRun, logs: RunLog, log: Callable[[str], None]) -> dict[str, Any]:
    cfg, ctx = run.cfg, run.ctx
    params = sum(p.numel() for p in run.net.parameters())
    log(f"searching L={cfg.space.layers}, F={cfg.space.filter_multiplier} ({params / 1e6:.2f}M weights) on "
        f"{len(run.halves[0])} + {len(run.halves[1])} images for {run.epochs} epochs of {run.steps_per_epoch} "
        f"steps, architecture updates from epoch {cfg.arch.start_epoch + 1}, on {ctx.device}"
        + (f" x {ctx.world_size} processes" if ctx.distributed else ""))
    start = time.perf_counter()
    if ctx.is_main and run.start_epoch == run.start_batch == 0:
        _record_architecture(run, 0, current_architecture(run))  # the initial alpha and beta: epoch 0 of the plots
    for epoch in range(run.start_epoch, run.end_epoch):
        stats = search_epoch(run, epoch, logs, log)
        end_of_epoch(run, epoch, stats, logs, log)
    arch = current_architecture(run)
    found = None
    if run.end_epoch == run.epochs:
        found = run.out_dir / "found.json"
        if ctx.is_main:
            write_architecture(arch, found, about=f"found by imseg search: {run.epochs} epochs on "
                               f"{cfg.data.name}, L={cfg.space.layers}, F={cfg.space.filter_multiplier} (retrain "
                               f"with another F by model.args.filter_multiplier)")
        log("\n".join([f"found architecture: {found} (path {list(arch.path)})", *genotype_lines(arch.genotype)]))
    elif run.start_epoch >= run.end_epoch:
        log(f"nothing to do: the checkpoint already finished {run.start_epoch} epochs")
    return {"out_dir": str(run.out_dir), "found": str(found) if found else None, "architecture": arch.to_dict(),
            "seconds": time.perf_counter() - start, "total_steps": run.total_steps}


def current_architecture(run: SearchRun) -> Architecture:
    with torch.no_grad():
        return decode_architecture(run.arch.alpha_weights().cpu(), run.arch.beta_weights().cpu(),
                                   run.cfg.space.filter_multiplier)


def _start_epoch(run: SearchRun, epoch: int, skip: int) -> None:
    """Seed what an epoch draws from by (seed, epoch), so that resuming repeats it; set train mode."""
    seed = epoch_seed(run.cfg.search.seed, epoch)
    seed_everything(seed)
    if skip and run.rng_state is not None:
        torch.set_rng_state(run.rng_state)  # mid-epoch resume: continue the random stream where it stopped
    for generator in run.generators:
        generator.manual_seed(seed)
    run.dataset.set_augmentation_seed(run.cfg.search.seed, epoch)
    for sampler in run.samplers:
        sampler.set_epoch(epoch, skip)
    run.train_net.train()


def search_epoch(run: SearchRun, epoch: int, logs: RunLog, log: Callable[[str], None]) -> SearchStats:
    """One epoch of weight steps, each followed by an architecture step once those have started."""
    skip = run.start_batch if epoch == run.start_epoch else 0
    _start_epoch(run, epoch, skip)
    arch_on = epoch >= run.cfg.arch.start_epoch
    weights_loader, arch_loader = run.loaders
    # Before the architecture steps start, the architecture half is not even loaded.
    pairs = zip(weights_loader, arch_loader) if arch_on else ((batch, None) for batch in weights_loader)
    bar = progress(pairs, f"search epoch {epoch + 1}/{run.epochs}", total=run.steps_per_epoch, initial=skip,
                   enabled=run.cfg.search.progress and run.ctx.is_main)
    stats, start = SearchStats(), time.perf_counter()
    for i, (weight_batch, arch_batch) in enumerate(bar, start=skip):
        if i >= run.steps_per_epoch:
            break
        where = f"epoch {epoch + 1}, step {run.step + 1}"
        weight_loss = weight_step(run, *weight_batch, where)
        arch_loss = arch_step(run, *arch_batch, where) if arch_batch is not None else None
        run.step += 1
        stats.steps, stats.weight_loss_sum = stats.steps + 1, stats.weight_loss_sum + weight_loss
        if arch_loss is not None:
            stats.arch_steps, stats.arch_loss_sum = stats.arch_steps + 1, stats.arch_loss_sum + arch_loss
        bar.set_postfix(loss=f"{stats.weight_loss:.3f}", arch=f"{stats.arch_loss or 0:.3f}")
        if run.step % run.cfg.search.log_every == 0:
            lr = run.weight_optimizer.param_groups[0]["lr"]
            logs.scalars(run.step, {"search/weight_loss": weight_loss, "search/lr": lr}
                         | ({"search/arch_loss": arch_loss} if arch_loss is not None else {}))
            logs.record({"type": "train", "epoch": epoch + 1, "step": run.step, "loss": weight_loss,
                         "arch_loss": arch_loss, "lr": lr})
        every = run.cfg.search.checkpoint_every_steps
        if every and run.step % every == 0 and i + 1 < run.steps_per_epoch:
            save_search_checkpoint(run, run.ckpt_dir / f"step-{run.step:08d}.pt", epoch, i + 1, {"step": run.step})
            if run.ctx.is_main:
                prune_checkpoints(run.ckpt_dir, run.cfg.search.keep_checkpoints)
    bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


def _loss(run: SearchRun, net: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor,
          alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    images = run.preprocessing(images.to(run.ctx.device, non_blocking=True))
    masks = masks.to(run.ctx.device, non_blocking=True)
    with autocast(run.ctx.device, run.amp_dtype):
        logits = net(images, alpha, beta)
    return F.cross_entropy(logits.float(), masks, ignore_index=run.dataset.ignore_index)


def _agreed(values: torch.Tensor, run: SearchRun, what: str, where: str) -> torch.Tensor:
    """``values`` averaged over processes (one all-reduce); a non-finite loss (entry 0) stops the search."""
    values = distributed.all_reduce_(values) / run.ctx.world_size
    loss = values[0].item()  # the step's one host sync: every process must agree before it steps
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"non-finite {what} loss ({loss}) at {where}; lower weights.lr / arch.lr or check "
                            f"the data")
    return values


def weight_step(run: SearchRun, images: torch.Tensor, masks: torch.Tensor, where: str) -> float:
    """SGD on the network weights, alpha and beta fixed (detached: they get no gradient). The loss."""
    with torch.no_grad():
        alpha, beta = run.arch.alpha_weights(), run.arch.beta_weights()
    loss = _loss(run, run.train_net, images, masks, alpha, beta)
    loss.backward()  # under DDP this averages the weight gradients over processes
    loss = _agreed(loss.detach().reshape(1), run, "weight", where)[0].item()
    if run.cfg.weights.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), run.cfg.weights.grad_clip)
    run.weight_optimizer.step()
    run.weight_optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    return loss


def arch_step(run: SearchRun, images: torch.Tensor, masks: torch.Tensor, where: str) -> float:
    """Adam on alpha and beta, the weights fixed. The loss.

    The unwrapped network runs, and autograd.grad asks for alpha's and beta's
    gradients only: the weights' are never computed (a cheaper backward) and
    DDP's gradient hooks never fire, so the weight steps stay in step.
    """
    params = [run.arch.alpha, run.arch.beta]
    loss = _loss(run, run.net, images, masks, run.arch.alpha_weights(), run.arch.beta_weights())
    grads = torch.autograd.grad(loss, params)
    flat = _agreed(torch.cat([loss.detach().reshape(1), *(g.reshape(-1) for g in grads)]), run, "architecture",
                   where)
    offset = 1
    for p in params:
        p.grad = flat[offset: offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    run.arch_optimizer.step()
    run.arch_optimizer.zero_grad(set_to_none=True)
    return flat[0].item()


def end_of_epoch(run: SearchRun, epoch: int, stats: SearchStats, logs: RunLog, log: Callable[[str], None]) -> None:
    """Log the epoch and alpha / beta with their decoding, draw the plots, write last.pt."""
    done = epoch + 1
    arch = current_architecture(run)
    entry = {"type": "epoch", "epoch": done, "step": run.step, "train_loss": stats.weight_loss,
             "arch_loss": stats.arch_loss, "lr": run.weight_optimizer.param_groups[0]["lr"],
             "epoch_seconds": stats.seconds, "path": list(arch.path)}
    logs.record(entry)
    logs.scalars(done, {"search/epoch_weight_loss": stats.weight_loss}
                 | ({"search/epoch_arch_loss": stats.arch_loss} if stats.arch_loss is not None else {}))
    arch_loss = f"  arch loss {stats.arch_loss:.4f}" if stats.arch_loss is not None else "  (weights warm-up)"
    log(f"epoch {done}/{run.epochs}  loss {stats.weight_loss:.4f}{arch_loss}  {stats.seconds:.0f}s  "
        f"path {list(arch.path)}")
    _check_in_sync(run)
    if run.ctx.is_main:
        _record_architecture(run, done, arch)
        if run.cfg.search.plots:
            _plot(run, log)
    save_search_checkpoint(run, run.ckpt_dir / "last.pt", done, 0, {k: v for k, v in entry.items() if k != "type"})


def _check_in_sync(run: SearchRun) -> None:
    """Under torchrun, stop if alpha / beta differ between processes: every process takes the same averaged
    Adam step, so they never should, and a search whose processes disagree would decode nothing meaningful."""
    if not run.ctx.distributed:
        return
    flat = torch.cat([p.detach().reshape(-1) for p in run.arch.parameters()])
    low = distributed.all_reduce_(flat.clone(), torch.distributed.ReduceOp.MIN)
    high = distributed.all_reduce_(flat.clone(), torch.distributed.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError(f"alpha / beta differ between the {run.ctx.world_size} processes by up to "
                           f"{(high - low).abs().max().item():.3g}: the architecture steps fell out of step")


def _record_architecture(run: SearchRun, epoch: int, arch: Architecture) -> None:
    """One line of ``arch.jsonl``: the normalised alpha and beta after ``epoch`` and what they decode to."""
    with torch.no_grad():
        alpha, beta = run.arch.alpha_weights().cpu(), run.arch.beta_weights().cpu()
    line = {"epoch": epoch, "step": run.step, "operations": list(OPERATIONS), "alpha": alpha.tolist(),
            "beta": beta.tolist(), "genotype": [list(pair) for pair in arch.genotype], "path": list(arch.path),
            "cell": genotype_lines(arch.genotype)}
    with open(run.out_dir / "arch.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def _plot(run: SearchRun, log: Callable[[str], None]) -> None:
    from imseg.search.plots import plot_search

    try:
        plot_search(run.out_dir)
    except Exception as e:  # the plots are a view of arch.jsonl: never worth losing hours of search over
        log(f"could not draw the search plots: {type(e).__name__}: {e}")
