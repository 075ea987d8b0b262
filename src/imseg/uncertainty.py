"""Monte-Carlo dropout inference (Kendall, Badrinarayanan & Cipolla, "Bayesian SegNet", BMVC 2017).

Any model with dropout layers can be sampled; the Bayesian SegNets
(``bayesian_segnet``, ``bayesian_segnet_basic``) are built for it. It lives
outside the model zoo because prediction uses it for every such model.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from imseg.outputs import main_logits


def _is_dropout(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout))


def has_dropout(model: nn.Module) -> bool:
    """Whether `mc_dropout_predict` can sample ``model`` (it has at least one dropout layer)."""
    return any(_is_dropout(m) for m in model.modules())


@torch.no_grad()
def mc_dropout_predict(
    model: nn.Module,
    x: torch.Tensor,
    samples: int = 8,
    *,
    uncertainty: Literal["variance", "entropy"] = "variance",
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo dropout inference (Bayesian SegNet).

    Runs ``samples`` forward passes with only the dropout layers in training
    mode (BatchNorm and everything else stay in eval mode: running statistics
    are used and never updated) and averages the softmax outputs.

    Args:
        model: a model with dropout layers (e.g. ``bayesian_segnet``).
        x: a normalised batch ``[B, C, H, W]``, as for ``model(x)``.
        samples: number of stochastic passes. The SegNet-Tutorial inference
            prototxts use 4 (Bayesian SegNet) and 8 (Basic); the paper reports
            averaging up to 50.
        uncertainty: ``"variance"`` (default, as the authors'
            ``test_bayesian_segnet.py``): the variance of each class's softmax
            probability over the samples, averaged over the classes.
            ``"entropy"``: the predictive entropy ``-sum_k p_k log p_k`` of the
            mean probabilities, in nats (0 .. log K).
        seed: if given, the dropout masks come from this seed (same seed, same
            result) and the global RNG state is left as it was.

    Returns:
        ``(mean_probs [B, K, H, W], uncertainty [B, H, W])``; the mean
        probabilities sum to 1 over K at every pixel. The model's
        train/eval flags are restored afterwards.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if uncertainty not in ("variance", "entropy"):
        raise ValueError(f"uncertainty must be 'variance' or 'entropy', got {uncertainty!r}")
    dropouts = [m for m in model.modules() if _is_dropout(m)]
    if not dropouts:
        raise ValueError(
            f"{type(model).__name__} has no dropout layers, so Monte-Carlo dropout would return the same "
            "prediction every time; use a Bayesian model (e.g. 'bayesian_segnet')"
        )
    modes = {m: m.training for m in model.modules()}
    cuda = [x.device] if x.device.type == "cuda" else []
    try:
        model.eval()
        for m in dropouts:
            m.train()
        with torch.random.fork_rng(devices=cuda, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            total = total_sq = None
            for _ in range(samples):
                probs = main_logits(model(x)).float().softmax(dim=1)
                total = probs if total is None else total + probs
                if uncertainty == "variance":
                    sq = probs * probs
                    total_sq = sq if total_sq is None else total_sq + sq
    finally:
        for m, training in modes.items():
            m.train(training)
    mean = total / samples
    if uncertainty == "variance":
        # E[p^2] - E[p]^2 (population variance, numpy's default as in the authors' script).
        unc = (total_sq / samples - mean * mean).clamp_min(0).mean(dim=1)
    else:
        unc = -(mean * mean.clamp_min(1e-12).log()).sum(dim=1)
    return mean, unc
