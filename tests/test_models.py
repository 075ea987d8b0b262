"""Model contract, parametrised over the registry: logits at input size for any H x W, in train and
eval mode; every parameter learns; any number of input channels; loud errors for bad names/arguments."""
from __future__ import annotations

import importlib
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imseg.meta import attach, meta_of
from imseg.models import (SegOutput, build_encoder, create_model, list_models, main_logits, model_arguments,
                          model_info)
from imseg.models.base import SegmentationModel
from imseg.models.encoders import Encoder
from imseg.models.fcn import FCN8s
from imseg.models.layers import resize_to, upsampling_deconv
from imseg.preprocessing import CAFFE, TORCHVISION, Preprocessing

NUM_CLASSES = 5
# Keep the tests fast: FCN's 4096-channel fc6 (100M parameters) only runs in the slow test.
FAST_KWARGS: dict[str, dict] = {"fcn8s": {"fc_channels": 32}}
# Each model family's own test file (tests/test_zoo_<family>.py) may declare
# FAST_KWARGS for its models; the registry-wide tests below use them all.
for _path in sorted(Path(__file__).parent.glob("test_zoo_*.py")):
    FAST_KWARGS.update(getattr(importlib.import_module(f"tests.{_path.stem}"), "FAST_KWARGS", {}))
MODELS = list_models()
# FCN-8s stands for its variants (16s, 32s and the at-once 8s: the same VGG-16 trunk, run on a 100-pixel
# padded input, 3-8 s each per test) in the registry-wide tests; the slow suite runs them all, and
# tests/test_zoo_fcn.py runs every variant's own geometry in the default suite.
FCN_VARIANTS = {"fcn16s", "fcn32s", "fcn8s_atonce"}
# Likewise the wider or deeper sizes of one network stand behind its smallest (the same code, more channels or
# blocks: 2-6 s each per test, HRNetV2-W48 17 s over the four tests): HRNetV2-W18, Auto-DeepLab-S and FCN-ResNet50
# run here; each size's published parameter count is checked in tests/test_zoo_nas_hr.py and test_zoo_fcn.py.
SIZE_VARIANTS = {"hrnetv2_w32", "hrnetv2_w48", "autodeeplab_m", "autodeeplab_l", "fcn_resnet101"}
MODELS_FAST = [pytest.param(n, marks=pytest.mark.slow) if n in FCN_VARIANTS | SIZE_VARIANTS else n for n in MODELS]


def build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, NUM_CLASSES, **{**FAST_KWARGS.get(name, {}), **kwargs})


@lru_cache(maxsize=None)
def cached(name: str) -> nn.Module:
    """One default model per name, shared by the read-only shape tests."""
    return build(name)


def test_registry_lists_the_models() -> None:
    assert {"fcn8s", "unet", "deeplabv3plus", "lraspp"} <= set(MODELS)
    for name in MODELS:
        info = model_info(name)
        assert info.paper and info.summary and 2000 < info.year < 2100


# 64x96 also runs in eval mode in test_in_channels and in train mode in
# test_every_parameter_learns, so the default suite keeps the odd size.
@pytest.mark.parametrize("size", [(97, 131), pytest.param((64, 96), marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", MODELS_FAST)
def test_output_is_input_size_in_train_and_eval(name: str, size: tuple[int, int]) -> None:
    model = cached(name)
    model.train()
    out = model(torch.randn(2, 3, *size))
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == (2, NUM_CLASSES, *size)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert tuple(out.shape) == (1, NUM_CLASSES, *size)


@pytest.mark.parametrize("device", ["meta", pytest.param("cpu", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", MODELS)
def test_camvid_size_in_eval_mode(name: str, device: str) -> None:
    """360x480 (CamVid): the size most users will run first. On the meta device only shapes propagate,
    which is what this test checks (real forwards run at other sizes above); the slow suite runs it for real."""
    with torch.device(device):
        model = build(name).eval()
        with torch.no_grad():
            out = main_logits(model(torch.randn(1, 3, 360, 480)))
    assert tuple(out.shape) == (1, NUM_CLASSES, 360, 480)


def _parameters_that_learn(model: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int = 2) -> set[str]:
    """The parameters that get a non-zero, finite gradient in one of ``steps`` optimiser steps on one batch
    (stopping early once every parameter has had one)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # bounded steps: no blow-up at any init
    names = {n for n, _ in model.named_parameters()}
    learned: set[str] = set()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(main_logits(model(x)), target).backward()
        learned |= {n for n, p in model.named_parameters()
                    if p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0}
        if learned == names:
            break
        optimizer.step()
    return learned


# "Every parameter learns", not "every parameter has a gradient on the first step": a zero-initialised
# classifier (FCN's score_fr, as in the paper) gives the layers below it a zero gradient until its first
# update, and learns from the second step on. Two steps on one batch show every parameter moving.
@pytest.mark.parametrize("name", MODELS_FAST)
def test_every_parameter_learns(name: str) -> None:
    model = build(name).train()
    x = torch.randn(2, 3, 64, 96)
    target = torch.randint(0, NUM_CLASSES, (2, 64, 96))
    stuck = sorted(set(dict(model.named_parameters())) - _parameters_that_learn(model, x, target))
    assert not stuck, f"parameters that never get a gradient: {stuck}"


# norm="group" (imseg/models/norm.py) is what makes batch size 1 trainable for the models whose BatchNorm
# follows a global pooling (PSPNet, DeepLabv3/v3+, PAN, Auto-DeepLab); every model must take it.
@pytest.mark.parametrize("name", MODELS_FAST)
def test_trains_a_step_at_batch_one_with_group_norm(name: str) -> None:
    model = build(name, norm="group").train()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model.imseg_spec["kwargs"]["norm"] == "group"
    x = torch.randn(1, 3, 64, 96)
    target = torch.randint(0, NUM_CLASSES, (1, 64, 96))
    assert _parameters_that_learn(model, x, target, steps=1)


# One and four channels take the same path through every builder (the first
# convolution is built for ``in_channels``); the slow suite runs both.
@pytest.mark.parametrize("in_channels", [pytest.param(1, marks=pytest.mark.slow), 4])
@pytest.mark.parametrize("name", MODELS_FAST)
def test_in_channels(name: str, in_channels: int) -> None:
    model = build(name, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(1, in_channels, 64, 96))
    assert tuple(out.shape) == (1, NUM_CLASSES, 64, 96)
    assert isinstance(model.preprocessing, Preprocessing)
    assert model.preprocessing.num_channels == in_channels


@pytest.mark.parametrize("name", MODELS)
def test_spec_and_preprocessing_are_recorded(name: str) -> None:
    model = cached(name)
    assert model.imseg_spec["name"] == name
    assert model.imseg_spec["num_classes"] == NUM_CLASSES
    assert model.preprocessing.num_channels == 3


@pytest.mark.parametrize("name", MODELS)
def test_every_model_is_a_segmentation_model_with_the_encoders_preprocessing(name: str) -> None:
    model = cached(name)
    assert isinstance(model, SegmentationModel) and model.meta is None
    if isinstance(model.encoder, Encoder):
        # Every pretrained-encoder model normalises as its encoder's weights expect.
        assert model.preprocessing == model.encoder.preprocessing


def test_preprocessing_is_the_encoders_unless_set_and_attach_sets_it() -> None:
    model = build("unet", encoder="xception65")
    assert model.preprocessing == model.encoder.preprocessing and model.preprocessing != TORCHVISION
    meta = meta_of(model).replace(preprocessing=CAFFE, class_names=tuple("abcde"))
    attach(model, meta)
    assert model.meta is meta and model.preprocessing == CAFFE and model.class_names == list("abcde")
    assert model.encoder.preprocessing != CAFFE  # the encoder keeps what its weights expect
    with pytest.raises(TypeError, match="preprocessing must be a Preprocessing, got dict"):
        model.preprocessing = CAFFE.to_dict()


def test_a_model_without_an_encoder_must_say_its_preprocessing() -> None:
    with pytest.raises(ValueError, match="has no Encoder to take its preprocessing from"):
        SegmentationModel(encoder=nn.Conv2d(3, 3, 1))
    assert SegmentationModel(preprocessing=TORCHVISION).preprocessing == TORCHVISION


@pytest.mark.parametrize("family", [("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce"), ("fcn_resnet50", "fcn_resnet101"),
                                    ("hrnetv2_w18_small", "hrnetv2_w18_small_v1", "hrnetv2_w18", "hrnetv2_w32",
                                     "hrnetv2_w48"),
                                    ("autodeeplab_s", "autodeeplab_m", "autodeeplab_l")])
def test_variants_share_one_builder_signature_and_keep_their_names(family: tuple[str, ...]) -> None:
    assert all(model_arguments(name) == model_arguments(family[0]) for name in family)
    assert [model_info(name).builder.__name__ for name in family] == list(family)


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(ValueError, match="deeplabv3plus.*fcn8s.*lraspp.*unet"):
        create_model("segformer9000", NUM_CLASSES)


def test_unknown_argument_lists_choices() -> None:
    with pytest.raises(TypeError, match=r"encoder_name.*accepts:.*encoder, encoder_weights"):
        create_model("unet", NUM_CLASSES, encoder_name="resnet18")


def test_unknown_encoder_lists_choices() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'resnet9'.*resnet18"):
        create_model("unet", NUM_CLASSES, encoder="resnet9")


def test_deeplab_aux_head_and_output_stride_8() -> None:
    model = build("deeplabv3plus", encoder="resnet18", output_stride=8, aux=True).train()
    assert model.aspp.convs[1][0].dilation == (12, 12)  # rates doubled at OS8
    out = model(torch.randn(2, 3, 65, 75))
    assert isinstance(out, SegOutput)
    assert out.out.shape == out.aux.shape == (2, NUM_CLASSES, 65, 75)
    (out.out.mean() + out.aux.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert main_logits(out) is out.out


def test_deeplab_separable_and_bad_output_stride() -> None:
    model = build("deeplabv3plus", encoder="mobilenet_v3_small", separable=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 70)).shape == (1, NUM_CLASSES, 50, 70)
    with pytest.raises(ValueError, match="output_stride 16 or 8"):
        build("deeplabv3plus", output_stride=32)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("unet", {"encoder": "timm:convnext_atto"}),  # first feature at stride 4: two skip-less blocks
        ("unet", {"encoder": "vgg16_bn", "upsample": "bilinear", "output_stride": 16}),
        ("unet", {"encoder": "mobilenet_v3_large"}),
        ("fcn8s", {"encoder": "resnet18"}),
        ("lraspp", {"encoder": "mobilenet_v3_small"}),
        ("lraspp", {"encoder": "resnet18", "output_stride": 32}),
        ("deeplabv3plus", {"encoder": "timm:mobilenetv3_small_050"}),
    ],
)
def test_other_encoders(name: str, kwargs: dict) -> None:
    model = build(name, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, NUM_CLASSES, 97, 131)


def test_lraspp_detail_stride_4_refines_the_stride_8_scores() -> None:
    """detail_stride=4 adds a residual stride-4 branch: with its classifier at zero it is the plain head."""
    torch.manual_seed(0)
    plain = build("lraspp", encoder="mobilenet_v3_small").eval()
    fine = build("lraspp", encoder="mobilenet_v3_small", detail_stride=4).eval()
    missing, unexpected = fine.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("refine.") for k in missing)
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        nn.init.zeros_(fine.refine.classifier.weight)
        nn.init.zeros_(fine.refine.classifier.bias)
        feats = plain.encoder(x)
        coarse = plain.classifier(feats[plain.low_index], feats[-1])
        fine_size = feats[fine.fine_index].shape[-2:]
        assert fine_size == (25, 33)  # stride 4 of 97x131
        expected = resize_to(resize_to(coarse, fine_size), x.shape[-2:])
        torch.testing.assert_close(fine(x), expected)
        nn.init.normal_(fine.refine.classifier.weight)
        assert not torch.allclose(fine(x), expected)  # the branch does change the scores
    fine.train()
    fine(torch.randn(2, 3, 64, 96)).mean().backward()
    assert all(p.grad is not None for p in fine.refine.parameters())
    with pytest.raises(ValueError, match="detail_stride is 8 .* or 4.*got 2"):
        build("lraspp", detail_stride=2)


def test_lraspp_aux_heads_train_only_on_the_first_map_at_each_stride() -> None:
    """aux_strides adds deep-supervision heads in training; eval returns the plain model's logits."""
    torch.manual_seed(0)
    plain = build("lraspp", encoder="mobilenet_v3_small").eval()
    boosted = build("lraspp", encoder="mobilenet_v3_small", aux_strides=[4, 8, 16])
    missing, unexpected = boosted.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("aux_heads.") for k in missing)
    strides = boosted.encoder.strides
    assert [strides[i] for i in boosted.aux_indices] == [4, 8, 16]
    # The shallowest map at stride 16, not the last one the head reads.
    assert boosted.aux_indices[2] == strides.index(16) < len(strides) - 1
    x = torch.randn(2, 3, 65, 97)
    with torch.no_grad():
        torch.testing.assert_close(boosted.eval()(x), plain(x))
    out = boosted.train()(x)
    assert isinstance(out, SegOutput) and len(out.aux) == 3
    assert all(a.shape == out.out.shape == (2, NUM_CLASSES, 65, 97) for a in out.aux)
    sum(a.square().mean() for a in out.aux).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in boosted.aux_heads.parameters())
    coarse = build("lraspp", encoder="mobilenet_v3_small", aux_strides=[16], aux_output_stride=4)
    assert coarse(x).aux[0].shape == (2, NUM_CLASSES, 17, 25)  # a quarter of 65x97, rounded up
    with pytest.raises(ValueError, match="no feature map at stride 32"):
        build("lraspp", aux_strides=[32])
    with pytest.raises(ValueError, match="aux_output_stride is 1, 2, 4 or 8, got 3"):
        build("lraspp", aux_output_stride=3)


def test_unet_decoder_channels_must_match_the_encoder() -> None:
    with pytest.raises(ValueError, match="decoder_channels needs 5 values"):
        build("unet", encoder="resnet18", decoder_channels=(64, 32, 16))


def test_bilinear_deconv_matches_bilinear_interpolation() -> None:
    """FCN's transposed convs start as bilinear upsampling with half-pixel centres (away from the borders)."""
    x = torch.randn(1, 3, 12, 10)
    for factor in (2, 8):
        up = upsampling_deconv(3, factor)(x)
        ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        assert up.shape == ref.shape
        m = factor  # border pixels differ: the deconv sees zeros outside, interpolate clamps
        torch.testing.assert_close(up[..., m:-m, m:-m], ref[..., m:-m, m:-m])


def test_fcn_fc6_fc7_come_from_vgg_classifier(tmp_path) -> None:
    """With VGG weights, fc6/fc7 are VGG's first two fully connected layers reshaped into convs."""
    fc = 8  # the real 4096 is the same reshape, just 500 times larger
    state = build_encoder("vgg16").state_dict()
    classifier = {
        "classifier.0.weight": torch.randn(fc, 512 * 7 * 7),
        "classifier.0.bias": torch.randn(fc),
        "classifier.3.weight": torch.randn(fc, fc),
        "classifier.3.bias": torch.randn(fc),
        "classifier.6.weight": torch.randn(1000, fc),
        "classifier.6.bias": torch.randn(1000),
    }
    path = tmp_path / "vgg16.pth"
    torch.save({**state, **classifier}, path)
    model = create_model("fcn8s", NUM_CLASSES, encoder_weights=str(path), fc_channels=fc)
    assert isinstance(model, FCN8s)
    torch.testing.assert_close(model.fc6.weight.detach(), classifier["classifier.0.weight"].view(fc, 512, 7, 7))
    torch.testing.assert_close(model.fc7.weight.detach()[:, :, 0, 0], classifier["classifier.3.weight"])
    torch.testing.assert_close(model.encoder.features[28].weight.detach(), state["features.28.weight"])
    assert model.encoder.classifier_state == {}  # not kept around after use


@pytest.mark.slow
def test_fcn8s_full_size() -> None:
    model = create_model("fcn8s", NUM_CLASSES).eval()
    assert model.fc6.weight.shape == (4096, 512, 7, 7)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, NUM_CLASSES, 97, 131)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_with_dynamic_size_matches_eager(name: str, tmp_path) -> None:
    """Shape code (padding, resizes) must stay symbolic so one exported graph serves every H x W."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = build(name).eval()
    dims = {2: torch.export.Dim("h", min=64, max=2048), 3: torch.export.Dim("w", min=64, max=2048)}
    program = torch.export.export(model, (torch.randn(1, 3, 97, 131),), dynamic_shapes={"x": dims})
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(program, (torch.randn(1, 3, 97, 131),), str(path), dynamo=True)
    session = ort.InferenceSession(str(path))
    for size in [(97, 131), (70, 250)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert got.shape == expected.shape
        # Random-init logits can be in the thousands: compare relative to their scale.
        assert abs(got - expected).max() <= 1e-4 * max(1.0, abs(expected).max())


# Profiling on the meta device takes 0.05-2.5 s a model: five quick ones in the default suite.
QUICK_PROFILES = {"fcn8s", "unet", "lraspp", "segnet", "deeplabv3plus"}


def test_every_registered_model_has_a_shipped_profile() -> None:
    from imseg.models.profile import shipped_profiles

    assert set(shipped_profiles()) == set(MODELS), "run python -m imseg.models.profile"


def test_the_shipped_catalogue_says_what_the_registry_says() -> None:
    """`imseg models` prints the catalogue without importing the models: it must not drift from them."""
    from imseg.catalogue import read_catalogue
    from imseg.models.registry import model_info

    catalogue = read_catalogue()
    assert set(catalogue) == set(MODELS), "run python -m imseg.models.profile"
    for name, row in catalogue.items():
        info = model_info(name)
        assert (row["paper"], row["year"], row["summary"], row["published"]) == (
            info.paper, info.year, info.summary, info.published), f"{name}: run python -m imseg.models.profile"


@pytest.mark.parametrize("name", [n if n in QUICK_PROFILES else pytest.param(n, marks=pytest.mark.slow)
                                  for n in MODELS])
def test_shipped_profile_matches_a_live_count(name: str) -> None:
    """`imseg models` prints the shipped counts: they must be what the code builds today."""
    from imseg.models.profile import profile_model, shipped_profiles

    shipped, live = shipped_profiles()[name], profile_model(name, 11, (360, 480))
    assert shipped.params == live.params, "stale models/profiles.json: run python -m imseg.models.profile"
    assert shipped.gflops == pytest.approx(live.gflops, abs=1e-3)
