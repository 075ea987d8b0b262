"""Whole-image, sliding-window and test-time-augmented inference agree where they must."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import imseg
from imseg.engine.inference import Inference, infer_logits, slide_logits
from imseg.preprocessing import TORCHVISION


class FlipSymmetric(nn.Module):
    """A conv whose kernel is mirrored onto itself: f(flip(x)) == flip(f(x)) by construction."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        w = (self.conv.weight + self.conv.weight.flip(-1)) / 2
        return nn.functional.conv2d(x, w, self.conv.bias, padding=1)


def _images(h=45, w=61, b=2):
    return torch.randint(0, 256, (b, 3, h, w), generator=torch.Generator().manual_seed(0)).to(torch.uint8)


def test_sliding_window_equal_to_image_is_the_whole_image_result():
    torch.manual_seed(0)
    model = imseg.create_model("unet", 5, encoder="resnet18").eval()
    images = _images(64, 96)
    with torch.no_grad():
        whole = infer_logits(model, images, Inference(TORCHVISION))
        slide = infer_logits(model, images, Inference(TORCHVISION, mode="slide", crop_size=(64, 96)))
    assert torch.equal(whole, slide)


def test_sliding_windows_cover_every_pixel_and_average_overlaps():
    # An identity-like model: the averaged overlaps must reproduce the input exactly.
    class Echo(nn.Module):
        def forward(self, x):
            return x[:, :1] * 1.0

    x = torch.randn(1, 3, 50, 70)
    out = slide_logits(Echo(), x, crop=(32, 32), stride=(20, 25), window_batch=3)
    torch.testing.assert_close(out, x[:, :1])


def test_flip_tta_of_a_flip_symmetric_model_returns_the_same_logits():
    model = FlipSymmetric().eval()
    images = _images()
    with torch.no_grad():
        plain = infer_logits(model, images, Inference(TORCHVISION))
        tta = infer_logits(model, images, Inference(TORCHVISION, flip=True))
    torch.testing.assert_close(tta, plain, rtol=0, atol=1e-5)


def test_multiscale_returns_input_size_and_averages():
    model = FlipSymmetric().eval()
    images = _images()
    inf = Inference(TORCHVISION, scales=(0.5, 1.0, 1.5), flip=True)
    with torch.no_grad():
        out = infer_logits(model, images, inf)
    assert out.shape == (2, 4, 45, 61)


def test_oom_falls_back_to_sliding_windows():
    class Picky(nn.Module):
        """Pretends to run out of memory on anything larger than 32x32."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            if x.shape[-1] > 32 or x.shape[-2] > 32:
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")
            return self.conv(x)

    model = Picky()
    images = _images(40, 50, 1)
    with pytest.warns(RuntimeWarning, match="falling back to sliding windows"):
        out = infer_logits(model, images, Inference(TORCHVISION, crop_size=(32, 32)))
    assert out.shape == (1, 2, 40, 50)


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="crop_size"):
        Inference(TORCHVISION, mode="slide")
    with pytest.raises(ValueError, match="mode"):
        Inference(TORCHVISION, mode="tiles")
    with pytest.raises(ValueError, match="scales"):
        Inference(TORCHVISION, scales=(0.0,))
