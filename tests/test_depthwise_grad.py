"""imseg's depthwise-convolution backward (models/depthwise_grad.py) against torch's own."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from imseg.models.depthwise_grad import DepthwiseConv2d, is_plain_depthwise, use_depthwise_grad
from imseg.models.registry import create_model

# (kernel, stride, padding, dilation, input size): MobileNetV3's and EfficientNet's layers, a
# dilated one, odd sizes where the strided grid does not reach the last row, uneven settings.
GEOMETRIES = [
    (3, 1, 1, 1, (9, 11)),
    (3, 2, 1, 1, (9, 11)),
    (5, 2, 2, 1, (10, 13)),
    (5, 1, 4, 2, (8, 9)),
    (3, (2, 1), (1, 0), (1, 2), (11, 7)),
    (3, 2, 0, 1, (12, 12)),
    (5, 3, 2, 1, (14, 16)),
]


def _pair(geometry, bias: bool, seed: int = 0):
    k, s, p, d, size = geometry
    torch.manual_seed(seed)
    ref = nn.Conv2d(6, 6, k, s, p, d, groups=6, bias=bias)
    fast = copy.deepcopy(ref)
    assert use_depthwise_grad(fast) == 1 and type(fast) is DepthwiseConv2d
    x = torch.randn(2, 6, *size)
    return ref, fast, x


def _grads(conv, x, autocast_dtype=None, channels_last=False):
    conv.zero_grad()
    x = x.clone()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with torch.autocast("cpu", autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        y = conv(x)
    torch.manual_seed(1)
    (y.float() * torch.randn(y.shape)).sum().backward()
    return y, x.grad, conv.weight.grad, conv.bias.grad if conv.bias is not None else None


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_gradients_match_torch(geometry, channels_last):
    ref, fast, x = _pair(geometry, bias=True)
    want = _grads(ref, x, channels_last=channels_last)
    got = _grads(fast, x, channels_last=channels_last)
    assert fast.weight.grad.stride() == fast.weight.stride()  # laid out as its parameter (DDP's buckets)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), got, want):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"{name} differs for {geometry}")


@pytest.mark.parametrize("geometry", GEOMETRIES[:4])
def test_bf16_autocast_gradients_match_torch(geometry):
    ref, fast, x = _pair(geometry, bias=False)
    want = _grads(ref, x, torch.bfloat16)
    got = _grads(fast, x, torch.bfloat16)
    assert got[0].dtype == want[0].dtype == torch.bfloat16  # autocast's choice, kept
    for name, a, b in zip(("output", "input grad", "weight grad"), got[:3], want[:3]):
        # Both sums run in bf16 or float32 in a different order: within bf16's 8 bits.
        scale = b.abs().max().item()
        assert (a.float() - b.float()).abs().max().item() <= 2e-2 * scale, f"{name} differs for {geometry}"


def test_stock_path_without_grad_and_same_state_dict():
    ref, fast, x = _pair(GEOMETRIES[1], bias=True)
    assert fast.state_dict().keys() == ref.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=0)
    # Tracing (the ONNX and TorchScript exporters) sees a plain convolution.
    traced = torch.jit.trace(fast, x)
    assert "aten::_convolution" in str(traced.graph) and "PythonOp" not in str(traced.graph)


def test_only_plain_depthwise_layers_switch():
    assert is_plain_depthwise(nn.Conv2d(4, 4, 3, padding=1, groups=4))
    assert not is_plain_depthwise(nn.Conv2d(4, 4, 3, padding=1))  # dense
    assert not is_plain_depthwise(nn.Conv2d(4, 8, 3, padding=1, groups=4))  # channel multiplier 2
    assert not is_plain_depthwise(nn.Conv2d(4, 4, 3, padding="same", groups=4))
    assert not is_plain_depthwise(nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"))
    assert not is_plain_depthwise(nn.Conv2d(4, 4, 3, padding=3, groups=4))  # wider than the kernel
    assert not is_plain_depthwise(nn.Conv2d(1, 1, 3, padding=1, groups=1))


def test_a_mobilenet_training_step_matches_torch():
    """LR-ASPP on MobileNetV3-Large: every depthwise layer switched, one AdamW step, the same weights."""
    torch.manual_seed(0)
    ref = create_model("lraspp", num_classes=5, encoder="mobilenet_v3_large")
    fast = copy.deepcopy(ref)
    assert use_depthwise_grad(fast) == 15  # MobileNetV3-Large's 15 inverted residuals
    x, y = torch.randn(2, 3, 64, 96), torch.randint(0, 5, (2, 64, 96))
    for model in (ref, fast):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = model(x)
        nn.functional.cross_entropy(out["out"] if isinstance(out, dict) else out, y).backward()
        opt.step()
    for (name, a), b in zip(ref.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{name} after one step")


def test_training_with_the_cpu_fast_paths_matches_training_without(tiny_root, tmp_path):
    """train.fast_depthwise_grad and train.channels_last (both on by default on the CPU) change the
    arithmetic's order only: two epochs of LR-ASPP end at the weights the stock paths give (with SGD:
    Adam's normalised step turns rounding in a near-zero gradient into a full-size difference)."""
    from imseg.config import config_from_dict
    from imseg.engine.checkpoint import load_checkpoint
    from imseg.engine.train import train
    from tests.helpers import tiny_config

    def run(name, **train_keys):
        cfg = config_from_dict(tiny_config(tiny_root, tmp_path / name, **{
            "data.crop_size": [64, 96], "model.name": "lraspp", "model.args": {"encoder": "mobilenet_v3_large"},
            "train.epochs": 2, "data.val_split": "", "optim.name": "sgd", "optim.lr": 0.01, **train_keys}))
        logged = []
        train(cfg, log=logged.append)
        return load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["state_dict"], logged

    fast, fast_log = run("fast")
    stock, stock_log = run("stock", **{"train.fast_depthwise_grad": False, "train.channels_last": False})
    assert any("15 depthwise convolutions compute their gradients imseg's way" in line for line in fast_log)
    assert not any("depthwise convolutions" in line for line in stock_log)
    for name, value in stock.items():
        assert fast[name].is_contiguous(), f"{name} is saved in another memory layout"
        torch.testing.assert_close(fast[name], value, rtol=1e-3, atol=1e-4, msg=f"{name} after two epochs")
