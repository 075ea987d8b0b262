"""SegNet, SegNet-Basic, Bayesian SegNet (+ MC dropout), DeconvNet and the original U-Net: the paper facts
(layer tables, parameter counts, dropout places, switch pooling at odd sizes)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg as tv_vgg

from imseg.models import build_encoder, create_model
from imseg.models.deconvnet import DeconvNet, pool5_padding
from imseg.models.segnet import SEGNET_DECODER, max_pool_with_switches, max_unpool_with_switches, mc_dropout_predict

# DeconvNet's fc6/fc7 (4096 channels, 120M parameters) only run at full width in the slow test.
FAST_KWARGS: dict[str, dict] = {"deconvnet": {"fc_channels": 32}}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


# --------------------------------------------------------------------------- switch pooling


@pytest.mark.parametrize("size", [(360, 480), (97, 131)])
def test_switch_pooling_matches_torch_ceil_mode_and_max_unpool(size: tuple[int, int]) -> None:
    """Our export-friendly pool/unpool equals caffe-style ceil-mode pooling + F.max_unpool2d(output_size=...)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size)  # negative values too: the -inf padding must never win
    sizes = []
    for _ in range(5):
        y, s = max_pool_with_switches(x)
        ref, ref_idx = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
        torch.testing.assert_close(y, ref, rtol=0, atol=0)
        back = max_unpool_with_switches(y, s)
        ref_back = F.max_unpool2d(ref, ref_idx, 2, 2, output_size=x.shape[-2:])
        torch.testing.assert_close(back, ref_back, rtol=0, atol=0)
        sizes.append(tuple(y.shape[-2:]))
        x = y
    if size == (360, 480):  # the CamVid sizes of the SegNet prototxt (upsample5: 23x30, upsample4: 45x60)
        assert sizes == [(180, 240), (90, 120), (45, 60), (23, 30), (12, 15)]


# --------------------------------------------------------------------------- SegNet


def test_segnet_layer_table_and_parameter_count() -> None:
    model = create_model("segnet", 11)
    assert n_params(model) == 29_449_355  # docs/models/segnet.md
    assert abs(n_params(model) - 29.5e6) / 29.5e6 < 0.02  # published 29.5M
    widths = [[unit[0].out_channels for unit in block] for block in model.decoder]
    assert widths == [list(w) for w in SEGNET_DECODER]
    assert list(model.decoder[0]._modules) == ["conv5_3_D", "conv5_2_D", "conv5_1_D"]
    assert list(model.decoder[4]._modules) == ["conv1_2_D"]
    for block in model.decoder:  # conv-BN-ReLU throughout the decoder, 3x3
        for unit in block:
            assert [type(m) for m in unit] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
            assert unit[0].kernel_size == (3, 3)
    # conv1_1_D: 3x3 to the classes, no BN / ReLU after it.
    assert isinstance(model.classifier, nn.Conv2d) and model.classifier.kernel_size == (3, 3)
    assert model.classifier.out_channels == 11
    assert len(model.pool_positions) == 5
    assert not [m for m in model.modules() if isinstance(m, nn.Dropout)]


def test_segnet_encoder_takes_torchvision_vgg16_bn_weights(tmp_path) -> None:
    """The encoder keeps torchvision's vgg16_bn names, so its weights file initialises it directly."""
    torch.manual_seed(1)
    features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=True)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    path = tmp_path / "vgg16_bn.pth"
    torch.save({**state, "classifier.6.weight": torch.randn(1000, 8)}, path)  # classifier keys are ignored
    model = create_model("segnet", 5, encoder_weights=str(path))
    torch.testing.assert_close(model.encoder.features[0].weight.detach(), state["features.0.weight"])
    torch.testing.assert_close(model.encoder.features[41].running_var, state["features.41.running_var"])


def test_segnet_basic_layer_table_and_parameter_count() -> None:
    model = create_model("segnet_basic", 11)
    assert n_params(model) == 1_416_587
    assert abs(n_params(model) - 1.425e6) / 1.425e6 < 0.02  # published 1.425M
    lrn = model.encoder.features[0]
    assert isinstance(lrn, nn.LocalResponseNorm)
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 1.0)
    assert [(c.kernel_size, c.out_channels) for c in convs(model.encoder)] == [((7, 7), 64)] * 4
    assert len(model.pool_positions) == 4
    assert [list(block._modules) for block in model.decoder] == [[f"conv_decode{i}"] for i in (4, 3, 2, 1)]
    # Decoder: unpool -> 7x7 conv 64 -> BN, and no ReLU anywhere in it.
    for block in model.decoder:
        assert [type(m) for m in block[0]] == [nn.Conv2d, nn.BatchNorm2d]
        assert block[0][0].kernel_size == (7, 7)
    assert model.classifier.kernel_size == (1, 1)


@pytest.mark.parametrize(
    "name, base, pools, decoder",
    [
        # encdrop3/4/5 after pool3-5, decdrop5/4/3 after conv5_1_D, conv4_1_D, conv3_1_D
        ("bayesian_segnet", "segnet", [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]),
        # encdrop3/4 after pool3-4, decdrop4/3 after conv_decode4/3
        ("bayesian_segnet_basic", "segnet_basic", [0, 0, 1, 1], [1, 1, 0, 0]),
    ],
)
def test_bayesian_dropout_places(name: str, base: str, pools: list[int], decoder: list[int]) -> None:
    model = create_model(name, 11)
    assert [isinstance(m, nn.Dropout) for m in model.pool_dropout] == [bool(p) for p in pools]
    assert [isinstance(m, nn.Dropout) for m in model.decoder_dropout] == [bool(d) for d in decoder]
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == sum(pools) + sum(decoder) and all(m.p == 0.5 for m in dropouts)
    assert n_params(model) == n_params(create_model(base, 11))  # dropout adds no parameters


# --------------------------------------------------------------------------- MC dropout


@pytest.fixture(scope="module")
def bayes() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("bayesian_segnet_basic", 5)
    with torch.no_grad():  # non-trivial BN statistics, so "untouched" means something
        model.train()(torch.randn(2, 3, 32, 48) * 3 + 1)
    return model.eval()


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_mc_dropout_mean_probs_uncertainty_and_bn_untouched(bayes: nn.Module) -> None:
    x = torch.randn(2, 3, 33, 47)
    before = bn_state(bayes)
    mean, var = mc_dropout_predict(bayes, x, samples=4, seed=0)
    assert mean.shape == (2, 5, 33, 47) and var.shape == (2, 33, 47)
    torch.testing.assert_close(mean.sum(dim=1), torch.ones(2, 33, 47))
    assert (var >= 0).all() and var.max() > 1e-6  # the samples differ
    for k, v in bn_state(bayes).items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert not any(m.training for m in bayes.modules())  # eval flags restored
    # One sample each with different masks: different predictions; plain eval is deterministic.
    one_a, _ = mc_dropout_predict(bayes, x, samples=1, seed=1)
    one_b, _ = mc_dropout_predict(bayes, x, samples=1, seed=2)
    assert not torch.allclose(one_a, one_b)
    with torch.no_grad():
        torch.testing.assert_close(bayes(x), bayes(x))
    _, entropy = mc_dropout_predict(bayes, x, samples=4, uncertainty="entropy", seed=0)
    assert (entropy >= 0).all() and (entropy <= math.log(5) + 1e-5).all()


def test_mc_dropout_is_deterministic_under_a_seed(bayes: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 48)
    a = mc_dropout_predict(bayes, x, samples=3, seed=7)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    b = mc_dropout_predict(bayes, x, samples=3, seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # a seed leaves the global RNG alone
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(5)
    c = mc_dropout_predict(bayes, x, samples=3)
    torch.manual_seed(5)
    d = mc_dropout_predict(bayes, x, samples=3)
    torch.testing.assert_close(c, d, rtol=0, atol=0)  # or the global seed, as usual
    assert not torch.allclose(a[0], c[0])


def test_mc_dropout_restores_train_mode_and_rejects_models_without_dropout(bayes: nn.Module) -> None:
    bayes.train()
    try:
        mc_dropout_predict(bayes, torch.randn(1, 3, 16, 16), samples=2, seed=0)
        assert all(m.training for m in bayes.modules())
    finally:
        bayes.eval()
    with pytest.raises(ValueError, match="no dropout layers"):
        mc_dropout_predict(create_model("segnet_basic", 5), torch.randn(1, 3, 16, 16))


# --------------------------------------------------------------------------- DeconvNet


def test_deconvnet_layer_table() -> None:
    model = create_model("deconvnet", 21, fc_channels=16)
    fc6, fc7, deconv6 = model.fc6[0], model.fc7[0], model.fc6_deconv[0]
    assert (fc6.kernel_size, fc6.padding, fc6.in_channels) == ((7, 7), (0, 0), 512)
    assert fc7.kernel_size == (1, 1)
    assert isinstance(deconv6, nn.ConvTranspose2d) and (deconv6.kernel_size, deconv6.out_channels) == ((7, 7), 512)
    names = [list(block._modules) for block in model.decoder]
    assert names[0] == ["deconv5_1", "deconv5_2", "deconv5_3"] and names[4] == ["deconv1_1", "deconv1_2"]
    widths = [[unit[0].out_channels for unit in block] for block in model.decoder]
    assert widths == [[512, 512, 512], [512, 512, 256], [256, 256, 128], [128, 64], [64, 64]]
    # BN + ReLU after every conv/deconv except the score layer.
    for unit in [model.fc6, model.fc7, model.fc6_deconv, *[u for block in model.decoder for u in block]]:
        assert [type(m) for m in unit][1:] == [nn.BatchNorm2d, nn.ReLU]
    assert all(isinstance(unit[0], nn.ConvTranspose2d) for block in model.decoder for unit in block)
    assert isinstance(model.score, nn.Conv2d) and model.score.kernel_size == (1, 1)
    # The encoder is VGG16 with BN after each of its 13 convs.
    enc = [type(m) for m in model.encoder.features if not isinstance(m, (nn.ReLU, nn.MaxPool2d))]
    assert enc == [nn.Conv2d, nn.BatchNorm2d] * 13


def test_deconvnet_pads_small_pool5_maps_to_8x8() -> None:
    assert pool5_padding(2, 3) == (0, 5, 0, 6)
    assert pool5_padding(12, 15) == (0, 0, 0, 0)  # CamVid 360x480: no padding
    model = create_model("deconvnet", 3, fc_channels=8).eval()
    seen = []
    model.fc6.register_forward_hook(lambda m, i, o: seen.append((tuple(i[0].shape[-2:]), tuple(o.shape[-2:]))))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 97, 131))  # pool5 4x5 -> padded 8x8 -> fc6 2x2
    assert seen == [((8, 8), (2, 2))]
    assert out.shape == (1, 3, 97, 131)


def test_deconvnet_fc6_fc7_come_from_vgg_classifier(tmp_path) -> None:
    fc = 8  # the real 4096 is the same reshape
    state = build_encoder("vgg16_bn").state_dict()
    classifier = {
        "classifier.0.weight": torch.randn(fc, 512 * 7 * 7),
        "classifier.0.bias": torch.randn(fc),
        "classifier.3.weight": torch.randn(fc, fc),
        "classifier.3.bias": torch.randn(fc),
    }
    path = tmp_path / "vgg16_bn.pth"
    torch.save({**state, **classifier}, path)
    model = create_model("deconvnet", 5, encoder_weights=str(path), fc_channels=fc)
    assert isinstance(model, DeconvNet)
    torch.testing.assert_close(model.fc6[0].weight.detach(), classifier["classifier.0.weight"].view(fc, 512, 7, 7))
    torch.testing.assert_close(model.fc7[0].weight.detach()[:, :, 0, 0], classifier["classifier.3.weight"])
    assert model.encoder.classifier_state == {}


@pytest.mark.slow
def test_deconvnet_full_size_parameter_count() -> None:
    model = create_model("deconvnet", 21)
    assert n_params(model) == 251_805_653
    assert abs(n_params(model) - 252e6) / 252e6 < 0.02  # published 252M
    assert n_params(model.fc6) + n_params(model.fc7) == 119_562_240


# --------------------------------------------------------------------------- original U-Net


def test_unet_original_layer_table_and_parameter_count() -> None:
    model = create_model("unet_original", 2)
    assert n_params(model) == 31_031_810  # docs/models/segnet.md: padded convs, no BN
    assert abs(n_params(model) - 31.0e6) / 31.0e6 < 0.02
    assert [block[0].out_channels for block in model.down] == [64, 128, 256, 512, 1024]
    assert all(len(convs(block)) == 2 for block in model.down + model.up)
    assert not [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    ups = [block[0] for block in model.upconv]
    assert [(u.in_channels, u.out_channels, u.kernel_size, u.stride) for u in ups] == [
        (c, c // 2, (2, 2), (2, 2)) for c in (1024, 512, 256, 128)
    ]
    assert [block[0].in_channels for block in model.up] == [1024, 512, 256, 128]  # up-conv + skip concatenated
    assert model.score.kernel_size == (1, 1) and model.score.out_channels == 2
    # Dropout 0.5 at the end of the contracting path (after the 512 and 1024 levels).
    assert [isinstance(m, nn.Dropout) for m in model.down_dropout] == [False, False, False, True, True]
    assert n_params(create_model("unet_original", 2, batch_norm=True)) == 31_037_698


def test_unet_original_pads_to_a_multiple_of_16() -> None:
    model = create_model("unet_original", 3, base_channels=4).eval()
    seen = []
    model.down[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, 3, 97, 131)
    assert seen == [(112, 144)]


@pytest.mark.parametrize("size", [5, 4, 1])
def test_local_response_norm_2d_is_torchs_lrn(size: int) -> None:
    """SegNet-Basic's input LRN through a 2-D average pool (ExecuTorch has no 3-D one): torch's numbers."""
    from imseg.models.segnet import LocalResponseNorm2d

    x = torch.randn(2, 7, 5, 6) * 3
    expected = torch.nn.LocalResponseNorm(size, alpha=1e-2, beta=0.75, k=1.0)(x)
    torch.testing.assert_close(LocalResponseNorm2d(size, alpha=1e-2, beta=0.75, k=1.0)(x), expected)
