"""A run folder holds one run: a second ``imseg train`` into it must say what it will do to the first.

Training into a folder that already holds checkpoints or a metrics log
would replace best.pt with a different run's and append a second run's
curve to metrics.jsonl (so ``imseg plot`` mixes them). So a fresh start
there is refused unless the user asks to continue (``--resume``) or to
start over (``--overwrite``: the earlier run's checkpoints and logs are
deleted first).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from imseg.engine.checkpoint import remove_partial_checkpoints
from imseg.engine.run_log import RunLog

# What a run writes; --overwrite deletes exactly these, nothing else the folder holds.
RUN_FILES = ("metrics.jsonl", "config.yaml", "curves.png")
RUN_FOLDERS = ("checkpoints", "tensorboard")


class RunFolderError(ValueError):
    """A run folder that already holds a run, met by a fresh start."""


def earlier_run(out_dir: str | Path) -> list[str]:
    """What in ``out_dir`` shows that a run was trained there (empty: nothing)."""
    out_dir = Path(out_dir)
    found = []
    log = out_dir / "metrics.jsonl"
    if log.is_file() and log.stat().st_size > 0:
        found.append(log.name)
    found += [f"checkpoints/{p.name}" for p in sorted((out_dir / "checkpoints").glob("*.pt"))]
    return found


def check_run_folder(out_dir: str | Path, overwrite: bool, is_main: bool) -> list[str]:
    """Refuse a fresh start in a folder holding a run, or (``overwrite``) delete that run; returns what was there."""
    out_dir = Path(out_dir)
    found = earlier_run(out_dir)
    if not found:
        return []
    if not overwrite:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise RunFolderError(f"{out_dir} already holds a run ({shown}): continue it with --resume auto, start "
                             "over with --overwrite (its checkpoints and logs are deleted), or choose another "
                             "--out-dir")
    if is_main:
        for name in RUN_FOLDERS:
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
    return found


def open_run_logs(is_main: bool, out_dir: Path, ckpt_dir: Path, write_config: Callable[[Path], None],
                  log: Callable[[str], None]) -> RunLog:
    """Open a run's logs, training's or the search's: the main process clears interrupted checkpoint
    writes and writes config.yaml first; the other processes log nothing."""
    if not is_main:
        return RunLog()
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in remove_partial_checkpoints(ckpt_dir):
        log(f"removed {leftover}: a checkpoint write that was interrupted (the checkpoints themselves are intact)")
    write_config(out_dir / "config.yaml")
    return RunLog(out_dir)
