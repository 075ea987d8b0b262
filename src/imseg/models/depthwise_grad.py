"""A faster backward pass for depthwise convolutions on CPU (``train.fast_depthwise_grad``).

PyTorch's CPU backward of a depthwise convolution (groups == channels) is
many times slower than its forward (oneDNN and the native kernels alike;
worst for dilated 5x5 kernels and under bf16), so in MobileNetV3 or
EfficientNet training much of a step goes there (per-layer and per-step
timings: benchmarks/depthwise_grad.py, docs/benchmarks.md). Both
gradients have cheaper forms:

- the input gradient of a depthwise convolution is itself a depthwise
  convolution: the output gradient (zeros inserted between its pixels when
  the stride is above 1) correlated with the flipped kernel, which runs on
  the fast forward kernel;
- the weight gradient alone runs fastest in float32 and channels-last,
  whatever the layer's own dtype and layout.

`DepthwiseConv2d` is an `nn.Conv2d` that takes this path when it trains on
the CPU and the stock one everywhere else (no grad, CUDA, tracing, export),
so its state dict, outputs and exports are those of an `nn.Conv2d`.
`use_depthwise_grad` switches the depthwise layers of a model over in place.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CHANNELS_LAST = torch.channels_last


class _DepthwiseConv(torch.autograd.Function):
    """conv2d(x, w, stride, padding, dilation, groups=channels) with the backward described above."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        grad_x = _input_grad(grad, weight, x.shape, stride, padding, dilation) if ctx.needs_input_grad[0] else None
        grad_w = _weight_grad(grad, x, weight, stride, padding, dilation) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None, None


def _input_grad(grad, weight, x_shape, stride, padding, dilation):
    """d loss / d x: the (zero-inserted) output gradient correlated with the flipped kernel.

    Zero insertion puts output pixel o at o * stride on a grid of length
    L = H + 2p - d(k-1); padding d(k-1) - p then gives exactly H outputs, and
    the positions past the last output pixel are zeros, as they must be."""
    k_h, k_w = weight.shape[2:]
    if stride != (1, 1):
        length = [x_shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) for i in range(2)]
        spread = _zeros_like_layout(grad, length)
        spread[:, :, ::stride[0], ::stride[1]] = grad
        grad = spread
    pad = (dilation[0] * (k_h - 1) - padding[0], dilation[1] * (k_w - 1) - padding[1])
    return F.conv2d(grad, weight.flip(2, 3), None, 1, pad, dilation, weight.shape[0])


def _weight_grad(grad, x, weight, stride, padding, dilation):
    """d loss / d w alone, computed in float32 channels-last (the fast layout for it), in w's dtype."""
    as_fast = {"dtype": torch.float32, "memory_format": _CHANNELS_LAST}
    grad_w = torch.ops.aten.convolution_backward(
        grad.to(**as_fast), x.to(**as_fast), weight.to(**as_fast), None, list(stride), list(padding),
        list(dilation), False, [0, 0], weight.shape[0], [False, True, False])[1]
    # In w's own strides: a [C, 1, k, k] tensor is contiguous in more than one stride pattern, and
    # DDP's gradient buckets (and a fused optimiser) expect a gradient laid out as its parameter.
    return torch.empty_like(weight).copy_(grad_w)


def _zeros_like_layout(t: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Zeros of t's batch and channels by ``size``, channels-last when t is (allocated as
    N, H, W, C and viewed: converting a zero tensor would cost a copy, and writing a
    strided view of t into it then copies whole rows of channels)."""
    n, c = t.shape[:2]
    if t.is_contiguous(memory_format=_CHANNELS_LAST) and not t.is_contiguous():
        return t.new_zeros(n, *size, c).permute(0, 3, 1, 2)
    return t.new_zeros(n, c, *size)


class DepthwiseConv2d(nn.Conv2d):
    """An `nn.Conv2d` with groups == in == out channels whose CPU training backward is the fast one."""

    def _conv_forward(self, x, weight, bias):
        if not self._fast_path_applies(x, weight):
            return super()._conv_forward(x, weight, bias)
        # Autocast does not reach inside an autograd.Function: cast as it
        # would for conv2d (a lower-precision op on the CPU), then turn it off.
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
        with torch.autocast("cpu", enabled=False):
            y = _DepthwiseConv.apply(x, weight, self.stride, self.padding, self.dilation)
        return y if bias is None else y + bias.to(y.dtype)[None, :, None, None]

    def _fast_path_applies(self, x, weight) -> bool:
        if not torch.is_grad_enabled() or x.device.type != "cpu" or not (x.requires_grad or weight.requires_grad):
            return False
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
            return False
        return not torch.onnx.is_in_onnx_export()


def is_plain_depthwise(module: nn.Module) -> bool:
    """A stock nn.Conv2d that the fast path computes exactly: one filter per channel, zero padding
    given as numbers and no wider than the dilated kernel (padding='same' and others keep torch's)."""
    if type(module) is not nn.Conv2d:
        return False
    if not (module.groups == module.in_channels == module.out_channels > 1) or module.padding_mode != "zeros":
        return False
    if isinstance(module.padding, str):
        return False
    return all(p <= d * (k - 1) for p, d, k in zip(module.padding, module.dilation, module.kernel_size))


def use_depthwise_grad(model: nn.Module) -> int:
    """Switch every plain depthwise nn.Conv2d of ``model`` to `DepthwiseConv2d` in place (the same
    parameters, the same state dict); how many were switched."""
    switched = 0
    for module in model.modules():
        if is_plain_depthwise(module):
            module.__class__ = DepthwiseConv2d
            switched += 1
    return switched


def apply_depthwise_grad(model: nn.Module, enabled: bool, device: torch.device) -> int:
    """``train.fast_depthwise_grad``: imseg's backward for training on the CPU (on GPUs cuDNN's
    own is fast and the layers are left alone). How many layers were switched."""
    return use_depthwise_grad(model) if enabled and device.type == "cpu" else 0
