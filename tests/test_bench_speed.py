"""benchmarks/speed.py: the diagnostic DeepLabV3+ rewired to SMP's layout is SMP's network, op for op."""
from __future__ import annotations

import pytest
import torch

from imseg.models.layers import AtrousConv2d
from tests.helpers import load_benchmark


def test_deeplabv3plus_rewired_to_smp_layout_matches_smp_in_params_flops_and_layers():
    pytest.importorskip("segmentation_models_pytorch")
    speed = load_benchmark("speed")
    ours = speed._ours_deeplabv3plus_in_smp_layout().eval()
    theirs = speed._smp("DeepLabV3Plus", "resnet50")().eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    # At 64 x 96 the ASPP's dilated taps read only padding, and AtrousConv2d skips them: fewer FLOPs than SMP,
    # the same output. With the skipping off, the very same count as SMP's network.
    trimmed = speed.forward_gflops(ours, (64, 96))
    assert trimmed < speed.forward_gflops(theirs, (64, 96))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AtrousConv2d, "forward", torch.nn.Conv2d.forward)
        full = speed.forward_gflops(ours, (64, 96))
    assert full == pytest.approx(speed.forward_gflops(theirs, (64, 96)), rel=1e-9)

    def layers(model):
        # AtrousConv2d is a Conv2d with the same parameters: compare base layer types.
        kinds = (torch.nn.Conv2d, torch.nn.BatchNorm2d)
        return sorted((next(k.__name__ for k in kinds if isinstance(m, k)), getattr(m, "groups", 1))
                      for m in model.modules() if isinstance(m, kinds))

    assert layers(ours) == layers(theirs)  # the same convs (depthwise ones included) and BatchNorms
    assert ours(torch.zeros(1, 3, 64, 96)).shape == (1, 11, 64, 96)
