"""AtrousConv2d: a dilated convolution that skips taps reading only padding must be the full convolution.

tests/test_zoo_deeplab.py checks the whole network too: torchvision's DeepLabV3-MobileNetV3 (rates 12/24/36) at
97 x 131, where every atrous branch of imseg's copy runs trimmed to 1x1, gives torchvision's logits.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from imseg.models.layers import AtrousConv2d, ConvBNAct


def _pair(groups: int, rate: int) -> tuple[AtrousConv2d, torch.Tensor]:
    torch.manual_seed(0)
    conv = AtrousConv2d(8, 8, 3, padding=rate, dilation=rate, groups=groups, bias=True)
    return conv, conv.weight.detach().clone()


@pytest.mark.parametrize("size", [(5, 7), (5, 40), (40, 7), (40, 40)])  # both, rows, columns, nothing dead
@pytest.mark.parametrize("groups", [1, 8])  # plain and depthwise (DeepLabV3+'s separable ASPP)
def test_the_trimmed_kernel_gives_the_full_convolution_and_its_gradients(size, groups) -> None:
    conv, weight = _pair(groups, rate=12)
    x = torch.randn(2, 8, *size, requires_grad=True)
    got = conv(x)
    expected = F.conv2d(x, weight.requires_grad_(), conv.bias.detach(), 1, 12, 12, groups)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    (g_x, g_w), (e_x, e_w) = (torch.autograd.grad(y.square().sum(), (x, w)) for y, w in
                              ((got, conv.weight), (expected, weight)))
    torch.testing.assert_close(g_x, e_x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g_w, e_w, rtol=1e-4, atol=1e-4)  # dead taps: zero gradient in both


def test_the_work_shrinks_where_taps_are_dead() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    conv, _ = _pair(1, rate=24)
    flops = {}
    for size in [(23, 30), (60, 60)]:  # rate 24 >= 23: a 1x3 kernel; nothing dead at 60 x 60
        with FlopCounterMode(display=False) as counter:
            conv(torch.randn(1, 8, *size))
        flops[size] = counter.get_total_flops() / (size[0] * size[1])
    assert flops[(23, 30)] * 3 == pytest.approx(flops[(60, 60)])


def test_an_export_with_a_symbolic_size_keeps_the_full_kernel_for_every_size() -> None:
    conv, _ = _pair(1, rate=12)
    dims = {2: torch.export.Dim("h", min=2, max=128), 3: torch.export.Dim("w", min=2, max=128)}
    # Exported at a size where taps are dead: a kernel trimmed then would be wrong at 40 x 40.
    program = torch.export.export(conv.eval(), (torch.randn(1, 8, 5, 7),), dynamic_shapes={"x": dims})
    for size in [(5, 7), (40, 40)]:
        x = torch.randn(1, 8, *size)
        torch.testing.assert_close(program.module()(x), conv(x), rtol=1e-5, atol=1e-5)


def test_conv_bn_act_keeps_its_state_dict_keys() -> None:
    dilated, plain = ConvBNAct(8, 8, 3, dilation=6), ConvBNAct(8, 8, 3)
    assert isinstance(dilated[0], AtrousConv2d) and type(plain[0]) is torch.nn.Conv2d
    assert dilated.state_dict().keys() == plain.state_dict().keys()
