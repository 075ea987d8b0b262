"""HRNetV2 (+OCR), Auto-DeepLab and FDNet: paper facts (parameter counts, widths, genotype, path), official
weight layout, OCR / deep-supervision aux outputs, scheduled drop path, DenseNet and HRNet encoders."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from imseg.losses import build_loss
from imseg.models import SegOutput, build_encoder, create_model
from imseg.models.autodeeplab import GENOTYPE, PATH, AtrousConvOp, SepConvOp, drop_path
from imseg.models.torchvision_encoders import DenseNetEncoder
from imseg.models.hrnet import HRNET_CLASSIFIER_PREFIXES, HRNET_CONFIGS, SpatialGather

# Every model here runs the registry-wide tests at its paper size in a few seconds; the generic autodeeplab
# (by default autodeeplab_s again) runs them on a short path ending at stride 32 with a small F instead.
FAST_KWARGS: dict[str, dict] = {"autodeeplab": {"filter_multiplier": 4, "path": [0, 1, 2, 3]}}

CITYSCAPES = 19


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------- HRNet


def test_hrnet_w18_small_v2_has_the_published_parameter_count() -> None:
    model = create_model("hrnetv2_w18_small", CITYSCAPES)
    assert n_params(model) == pytest.approx(3.9e6, rel=0.02)


def test_hrnet_w18_small_v1_has_the_published_parameter_count_and_timms_layout(tmp_path) -> None:
    """HRNet-Semantic-Segmentation's table: HRNetV2-W18-Small-v1, 1.5M parameters (Cityscapes, 19 classes).

    The figure is rounded to 0.1M, so the tolerance is its rounding interval, +-0.05M: we count 1,540,819
    (backbone 1,477,920, equal to timm's hrnet_w18_small without its classification head; head 62,899).
    """
    model = create_model("hrnetv2_w18_small_v1", CITYSCAPES)
    assert n_params(model) == pytest.approx(1.5e6, abs=0.05e6)
    assert n_params(model) == 1_540_819
    enc = model.encoder
    assert enc.channels == [16, 32, 64, 128] and model.last_layer[0].in_channels == 240
    assert len(enc.layer1) == 1 and enc.layer1[0].conv3.out_channels == 128
    assert [len(enc.stage2), len(enc.stage3), len(enc.stage4)] == [1, 1, 1]
    reference = timm.create_model("hrnet_w18_small", pretrained=False).state_dict()
    path = tmp_path / "hrnet_w18_small.pth"
    torch.save(reference, path)
    loaded = create_model("hrnetv2_w18_small_v1", 3, encoder_weights=str(path)).encoder
    fuse_weight = loaded.stage4[0].fuse_layers[0][3][0].weight
    torch.testing.assert_close(fuse_weight, reference["stage4.0.fuse_layers.0.3.0.weight"])


@pytest.mark.slow
def test_hrnet_w48_has_the_published_parameter_count() -> None:
    model = create_model("hrnetv2_w48", CITYSCAPES)
    assert n_params(model) == pytest.approx(65.85e6, rel=0.02)  # published 65.8-65.9M
    ocr = create_model("hrnetv2_w48", CITYSCAPES, ocr=True)
    assert n_params(ocr) == pytest.approx(70e6, rel=0.02)  # "about 70M" (unverified)


def test_hrnet_layout_follows_the_config_table() -> None:
    enc = create_model("hrnetv2_w18_small", 3).encoder
    assert enc.channels == [18, 36, 72, 144] and enc.strides == [4, 8, 16, 32]
    assert len(enc.layer1) == 2 and enc.layer1[0].conv3.out_channels == 256
    assert [len(enc.stage2), len(enc.stage3), len(enc.stage4)] == [1, 3, 2]
    assert all(len(branch) == 2 for branch in enc.stage4[0].branches)
    assert HRNET_CONFIGS["hrnetv2_w48"].modules == (1, 4, 3) and HRNET_CONFIGS["hrnetv2_w48"].blocks == 4
    # Fusion: lower -> higher is a 1x1 conv + BN; higher -> lower is repeated 3x3 stride-2 convs.
    fuse = enc.stage4[0].fuse_layers
    assert fuse[0][3][0].kernel_size == (1, 1) and fuse[0][3][0].out_channels == 18
    assert [seq[0].stride for seq in fuse[3][0]] == [(2, 2)] * 3 and fuse[3][0][-1][0].out_channels == 144
    head = create_model("hrnetv2_w18_small", 3).last_layer
    assert (head[0].in_channels, head[0].out_channels, head[3].out_channels) == (270, 270, 3)


def test_hrnet_keeps_the_official_names_so_imagenet_files_load(tmp_path) -> None:
    """timm's hrnet_* are ported from the official code with its names: their weights load as they are."""
    reference = timm.create_model("hrnet_w18_small_v2", pretrained=False).state_dict()
    path = tmp_path / "hrnet_w18_small_v2.pth"
    torch.save(reference, path)
    model = create_model("hrnetv2_w18_small", 3, encoder_weights=str(path), in_channels=1)
    backbone = {k for k in reference if not k.startswith(HRNET_CLASSIFIER_PREFIXES)}
    assert backbone == set(model.encoder.state_dict())
    fuse_weight = model.encoder.stage4[1].fuse_layers[0][2][0].weight
    torch.testing.assert_close(fuse_weight, reference["stage4.1.fuse_layers.0.2.0.weight"])
    # One input channel: the RGB filters are summed.
    torch.testing.assert_close(model.encoder.conv1.weight, reference["conv1.weight"].sum(1, keepdim=True))


def test_hrnet_imagenet_offline_says_how_to_use_a_file(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"hrnet_w18_small_v2\.ms_in1k.*pass the file's path"):
        create_model("hrnetv2_w18_small", 3, encoder_weights="imagenet")


def test_hrnet_ocr_head_and_aux_output() -> None:
    model = create_model("hrnetv2_w18_small", 4, ocr=True, aux=True).train()
    assert model.conv3x3_ocr[0].out_channels == 512
    attention = model.ocr_distri_head.object_context_block
    assert attention.key_channels == 256 and attention.f_up[0].out_channels == 512
    assert model.ocr_distri_head.conv_bn_dropout[0].in_channels == 1024
    assert model.ocr_distri_head.conv_bn_dropout[2].p == 0.05
    assert model.aux_head[0].out_channels == 270 and model.aux_head[3].out_channels == 4
    out = model(torch.randn(2, 3, 65, 83))
    assert isinstance(out, SegOutput) and out.out.shape == out.aux.shape == (2, 4, 65, 83)
    target = torch.randint(0, 4, (2, 65, 83))
    (F.cross_entropy(out.out, target) + 0.4 * F.cross_entropy(out.aux, target)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    plain = create_model("hrnetv2_w18_small", 4, ocr=True).eval()
    assert isinstance(plain(torch.randn(1, 3, 64, 64)), torch.Tensor)
    with pytest.raises(ValueError, match="needs ocr=True"):
        create_model("hrnetv2_w18_small", 4, aux=True)


def test_ocr_object_regions_are_softmax_weighted_over_pixels() -> None:
    feats = torch.randn(2, 8, 5, 7)
    logits = torch.randn(2, 3, 5, 7)
    regions = SpatialGather()(feats, logits)
    assert regions.shape == (2, 8, 3, 1)
    weights = logits.flatten(2).softmax(dim=2)  # per class, sums to 1 over the 35 pixels
    torch.testing.assert_close(regions[..., 0], torch.einsum("bkp,bcp->bck", weights, feats.flatten(2)))


def test_hrnet_encoder_dilates_for_other_decoders() -> None:
    enc = build_encoder("hrnetv2_w18_small", output_stride=8)
    assert enc.strides == [4, 8, 8, 8]
    assert enc.stage4[0].branches[3][0].conv1.dilation == (4, 4)
    model = create_model("deeplabv3plus", 3, encoder="hrnetv2_w18_small").eval()  # output stride 16
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, 3, 97, 131)


@pytest.mark.slow
def test_hrnet_ocr_exports_with_dynamic_size(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = create_model("hrnetv2_w18_small", 3, ocr=True).eval()
    dims = {2: torch.export.Dim("h", min=64, max=1024), 3: torch.export.Dim("w", min=64, max=1024)}
    program = torch.export.export(model, (torch.randn(1, 3, 97, 131),), dynamic_shapes={"x": dims})
    path = tmp_path / "ocr.onnx"
    torch.onnx.export(program, (torch.randn(1, 3, 97, 131),), str(path), dynamo=True)
    session = ort.InferenceSession(str(path))
    x = torch.randn(1, 3, 70, 150)
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert abs(got - expected).max() <= 1e-4 * max(1.0, abs(expected).max())


# --------------------------------------------------------------------------- Auto-DeepLab


@pytest.mark.parametrize(
    "name, filters, published",
    [("autodeeplab_s", 20, 10.15e6), ("autodeeplab_m", 32, 21.62e6), ("autodeeplab_l", 48, 44.42e6)],
)
def test_autodeeplab_matches_the_published_parameter_counts(name: str, filters: int, published: float) -> None:
    model = create_model(name, CITYSCAPES)
    assert n_params(model) == pytest.approx(published, rel=0.02)
    # Cell outputs: 5 blocks of F * 2**level filters along the searched path.
    assert [cell.out_channels for cell in model.encoder.cells] == [5 * filters * 2**level for level in PATH]


def test_autodeeplab_path_genotype_and_head() -> None:
    model = create_model("autodeeplab_s", 3)
    backbone = model.encoder
    assert PATH == (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)
    assert backbone.strides == [4, 8] and backbone.channels == [100, 200]  # Cell_2 (OS4), last cell (OS8)
    assert model.low_project[0].in_channels == 100  # the decoder's low-level features are Cell_2
    assert [branch[0].dilation for branch in model.aspp.convs[1:4]] == [(12, 12), (24, 24), (36, 36)]
    cell = backbone.cells[0]
    kinds = [("sep" if isinstance(op, SepConvOp) else "atrous", op) for op in cell.ops]
    assert [k for k, _ in kinds] == [g[0] for g in GENOTYPE]
    for (kind, kernel, _), op in zip(GENOTYPE, cell.ops):
        convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
        if kind == "sep":  # two repeats of depthwise kxk + pointwise 1x1
            assert [c.kernel_size[0] for c in convs] == [kernel, 1, kernel, 1] and convs[0].groups == 20
        else:  # one regular kxk conv with rate 2
            assert len(convs) == 1 and convs[0].kernel_size == (kernel, kernel) and convs[0].dilation == (2, 2)
    # Cell 3 goes from OS4 to OS8: ops on the cell inputs reduce, ops on earlier blocks do not.
    reducing = backbone.cells[3].ops
    for (kind, _, source), op in zip(GENOTYPE, reducing):
        if kind == "sep":
            assert op[1].stride == ((2, 2) if source < 2 else (1, 1))
        else:
            assert isinstance(op, AtrousConvOp) and op.stride == (2 if source < 2 else 1) and op.conv.dilation == (
                (1, 1) if source < 2 else (2, 2)
            )


def test_scheduled_drop_path() -> None:
    x = torch.ones(20000, 1, 1, 1)
    dropped = drop_path(x, torch.tensor(0.7))
    assert (dropped == 0).float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.03)  # kept samples are rescaled by 1 / keep

    model = create_model("autodeeplab_s", 3, drop_path_keep_prob=0.6, drop_path_total_steps=10).train()
    backbone = model.encoder
    keep = backbone._keep_probs()  # step 0: nothing is dropped yet
    assert all(k.item() == 1.0 for k in keep) and backbone.drop_path_step.item() == 1
    backbone.drop_path_step.fill_(10)
    keep = backbone._keep_probs()  # end of the schedule: the last cell keeps 0.6, cell i 1 - (i+1)/12 * 0.4
    assert keep[-1].item() == pytest.approx(0.6) and keep[0].item() == pytest.approx(1 - 0.4 / 12)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()  # runs with drop path
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))  # no drop path at evaluation
    assert "encoder.drop_path_step" in model.state_dict()
    assert "encoder.drop_path_step" not in create_model("autodeeplab_s", 3).state_dict()


# --------------------------------------------------------------------------- FDNet / DenseNet


def test_fdnet_aggregates_all_previous_blocks_and_supervises_deeply() -> None:
    """Fig. 3: every aggregated map (aggregation 1, the aux output; aggregation 2, the main one) is upsampled to
    H x W x C and scored, here by the boundary-aware loss and CE together, as the paper's multiple losses."""
    model = create_model("fdnet", 4, aux=True).train()
    assert model.encoder.strides == [2, 4, 8, 16, 16]  # "FDNet-16s"
    # Aggregation 1: dense blocks 1-4 (256 + 512 + 1024 + 1024); aggregation 2 adds decoder block 5.
    assert model.aggregate1.compress[0].in_channels == 2816
    assert model.aggregate2.compress[0].in_channels == 2816 + 256
    assert len(model.denseblock5) == 6
    out = model(torch.randn(2, 3, 65, 83))
    assert isinstance(out, SegOutput) and out.out.shape == out.aux.shape == (2, 4, 65, 83)
    target = torch.randint(0, 4, (2, 65, 83))
    loss = build_loss([{"name": "ce"}, {"name": "boundary_aware"}], ignore_index=255, aux_weight=1.0)
    terms = build_loss([{"name": "ce"}, {"name": "boundary_aware"}], ignore_index=255)
    torch.testing.assert_close(loss(out, target), terms(out.out, target) + terms(out.aux, target))
    loss(out, target).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_densenet_encoder_loads_torchvision_files_and_matches_torchvision(tmp_path) -> None:
    reference = torchvision.models.densenet121(weights=None).eval()
    # torchvision's published files use the old "norm.1" key names and have no num_batches_tracked: save one so.
    state = {
        k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v
        for k, v in reference.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "densenet121.pth"
    torch.save(state, path)
    enc = build_encoder("densenet121", weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[-1], F.relu(reference.features(x)))
        expected_s8 = reference.features.transition2.norm(reference.features[:7](x)).relu()
        torch.testing.assert_close(enc(x)[2], expected_s8)


def test_densenet_dilation_and_densenet264() -> None:
    enc = DenseNetEncoder("densenet121", output_stride=8)
    assert enc.features.denseblock3.denselayer1.conv2.dilation == (2, 2)
    assert enc.features.denseblock4.denselayer16.conv2.dilation == (4, 4)
    assert enc.features.denseblock2.denselayer1.conv2.dilation == (1, 1)
    enc264 = DenseNetEncoder("densenet264")
    assert [len(getattr(enc264.features, f"denseblock{i}")) for i in range(1, 5)] == [6, 12, 64, 48]
    assert enc264.channels == [64, 256, 512, 2304, 2688]
    assert n_params(enc264) == 30_648_704  # torchvision's DenseNet(32, (6, 12, 64, 48)) without its classifier
    assert create_model("fdnet", 3, encoder="densenet264").encoder.name == "densenet264"
    with pytest.raises(ValueError, match="no ImageNet weights for encoder 'densenet264'"):
        enc264.load_weights("imagenet")
