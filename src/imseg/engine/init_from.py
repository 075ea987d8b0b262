"""Start a run from the weights of a model file (``model.init_from``): a second phase, or fine-tuning.

Unlike a resume, only the weights come over: the optimiser, schedule, step
count and EMA start fresh, as mmsegmentation's ``load_from`` does. The file
must fit the configured model key for key and shape; when it fits but was
trained on other class names or another input convention, the run says so,
because the head's channels or the normalisation would then mean something
else (the preprocessing trap of the founding document).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from imseg.engine.checkpoint import CheckpointError, load_fitting, read_weights
from imseg.meta import ModelMeta


def load_init_weights(model: nn.Module, meta: ModelMeta, path: str, log: Callable[[str], None],
                      mismatched: str = "error") -> None:
    """Load the weights of ``path`` into ``model`` (built from the config, described by ``meta``).

    ``mismatched``: 'error', or 'random' to keep the model's initialisation where a shape differs.
    """
    what = f"model.name {meta.name!r} with {meta.num_classes} classes"
    if mismatched == "error":
        what += " (model.init_mismatched: random keeps the random initialisation of tensors whose shape differs)"
    try:
        file_meta, weights, source = read_weights(path)
        kept = load_fitting(model, weights, source, what, keep_mismatched=mismatched == "random")
    except CheckpointError as e:
        raise CheckpointError(f"model.init_from: {e}") from None
    log(f"starting from the weights of {source} (model.init_from); optimiser and schedule start fresh")
    if kept:
        log(f"{len(kept)} tensors differ in shape and keep their random initialisation "
            f"(model.init_mismatched: random): {', '.join(kept)}")
    if tuple(file_meta.class_names) != tuple(meta.class_names):
        log(f"note: {source} was trained on classes {list(file_meta.class_names)}; this run's are "
            f"{list(meta.class_names)}: each output channel now means this run's class")
    if file_meta.preprocessing.to_dict() != meta.preprocessing.to_dict():
        log(f"note: {source} was trained on inputs prepared as {file_meta.preprocessing.to_dict()}; this run "
            f"prepares them as {meta.preprocessing.to_dict()} (model.preprocessing)")
