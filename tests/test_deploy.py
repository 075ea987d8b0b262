"""Deployment: every export format run in its own runtime, against eager PyTorch, on real CamVid images.

One small LR-ASPP (MobileNetV3-Small) is trained for a few seconds on two
CamVid images (so its predictions have structure an int8 error can break:
nine classes in view), exported once per format, and compared:

* fp32 files (ONNX in onnxruntime and OpenVINO, OpenVINO IR, ExecuTorch .pte):
  ``relative_difference`` = max |exported - eager| / max |eager| over all
  logits of the batch, at most ``FP32_RTOL`` = 1e-4;
* int8 files (ONNX QDQ, OpenVINO through NNCF): pixel agreement of the
  arg-max with the fp32 model on CamVid test images, at least
  ``INT8_AGREEMENT``, and the mIoU of the int8 masks against the fp32 masks.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imseg.deploy import backend_model, open_backend
from imseg.deploy.parity import compare_logits, mean_iou
from imseg.engine.checkpoint import CheckpointError, load_model
from imseg.engine.inference import Inference, infer_logits
from imseg.engine.legend import present_classes, with_legend
from imseg.extras import MissingExtraError, require
from tests.helpers import run_cli, tiny_camvid_copy

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

FP32_RTOL = 1e-4
# Measured on an AVX-512 VNNI CPU: agreement 0.97-0.99, mask mIoU 0.84-0.95. Calibrating on images normalised
# the wrong way, or a wrong scale or zero point, falls far below; the margin is for other CPUs' int8 kernels.
INT8_AGREEMENT = 0.90
INT8_MIOU = 0.65  # mIoU of the int8 masks against the fp32 masks
SIZE = (96, 128)  # the tiny copies' size; exports are made at it


@pytest.fixture(scope="module")
def data(camvid_root, tmp_path_factory) -> Path:
    return tiny_camvid_copy(camvid_root, tmp_path_factory.mktemp("camvid"), n=2, size=SIZE)


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory) -> Path:
    """LR-ASPP / MobileNetV3-Small fit to the two training images (about 5 s on one core).

    GroupNorm, not BatchNorm: after 80 steps on batches of two, BatchNorm's running statistics leave the
    eval-mode model predicting one or two classes, too little structure for the int8 checks.
    """
    from imseg.config import config_from_dict
    from imseg.engine.train import train

    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    raw = {
        "model": {"name": "lraspp", "args": {"encoder": "mobilenet_v3_small", "norm": "group"}},
        "data": {"name": "camvid", "root": str(data), "crop_size": list(SIZE), "scale_range": [1.0, 1.0],
                 "hflip": False, "batch_size": 2, "num_workers": 0},
        "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0},
        "train": {"epochs": 80, "val_every": 80, "save_every": 80, "out_dir": str(out), "progress": False,
                  "log_every": 80},
    }
    train(config_from_dict(raw), log=lambda m: None)
    return out / "checkpoints" / "last.pt"


def _images(data: Path, split: str = "test") -> torch.Tensor:
    files = sorted((data / split).glob("*.png"))
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])


def _export(checkpoint: Path, out: Path, *args: str) -> dict:
    code, stdout, err = run_cli("export", checkpoint, "--out", out, "--size", *map(str, SIZE), *args)
    assert code == 0, err
    return json.loads(stdout)


@pytest.fixture(scope="module")
def exports(checkpoint, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exports")
    files = {"onnx": folder / "m.onnx", "openvino": folder / "m.xml"}
    for fmt, path in files.items():
        report = _export(checkpoint, path, "--format", fmt)
        assert report["relative_difference"] <= FP32_RTOL, report  # the exporter's own check, at another size
    return files


@pytest.mark.parametrize("fmt, backend", [("onnx", "onnxruntime"), ("onnx", "openvino"), ("openvino", "openvino")])
def test_fp32_exports_match_eager_on_camvid_images(exports, checkpoint, data, camvid_root, fmt, backend):
    model = load_model(checkpoint)
    runtime = open_backend(exports[fmt], backend)
    assert runtime.name == backend and runtime.meta == model.meta  # classes, palette, preprocessing: from the file
    assert runtime.input_size is None  # dynamic H x W
    full = torch.from_numpy(np.array(Image.open(sorted((camvid_root / "test").glob("*.png"))[0]).convert("RGB")))
    for images in (_images(data), full.permute(2, 0, 1)[None]):  # the tiny copies, and one at 360 x 480
        x = model.preprocessing(images)
        with torch.no_grad():
            expected = model(x)
        result = compare_logits(runtime.logits(x), expected)
        assert result["relative_difference"] <= FP32_RTOL, result
        assert result["agreement"] >= 0.999


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_sliding_windows_scales_and_flips_run_around_the_runtime(exports, checkpoint, data, backend):
    model = load_model(checkpoint)
    wrapped = backend_model(open_backend(exports["onnx"], backend))
    images = _images(data)
    for inference in (Inference(model.preprocessing, mode="slide", crop_size=(64, 64), stride=(40, 40)),
                      Inference(model.preprocessing, scales=(0.75, 1.25), flip=True)):
        with torch.no_grad():
            expected, got = infer_logits(model, images, inference), infer_logits(wrapped, images, inference)
        assert compare_logits(got, expected)["relative_difference"] <= FP32_RTOL


def test_a_static_export_serves_other_sizes_by_padding_and_windows(checkpoint, data, tmp_path):
    model = load_model(checkpoint)
    _export(checkpoint, tmp_path / "s.onnx", "--static")
    runtime = open_backend(tmp_path / "s.onnx")
    assert runtime.input_size == SIZE and runtime.fixed_batch == 1
    x = model.preprocessing(_images(data))
    with torch.no_grad():
        assert compare_logits(runtime.logits(x), model(x))["relative_difference"] <= FP32_RTOL  # its own size
        # Larger: windows of exactly the exported size, so sliding-window inference at that crop is exact.
        big = torch.nn.functional.interpolate(_images(data).float(), size=(130, 170), mode="bilinear")
        slide = Inference(model.preprocessing, mode="slide", crop_size=SIZE)
        expected, got = infer_logits(model, big, slide), infer_logits(backend_model(runtime), big, slide)
    assert compare_logits(got, expected)["relative_difference"] <= FP32_RTOL
    assert runtime.logits(x[:, :, :50, :70]).shape == (2, 11, 50, 70)  # smaller: padded, cropped back


# Calibrating and running int8 takes 18 s per format: ONNX's runs in make test, OpenVINO's (NNCF) with
# OpenVINO's static IR (15 s, below) in make test-all, to keep CI in its 10 minutes.
@pytest.mark.parametrize("fmt", ["onnx", pytest.param("openvino", marks=pytest.mark.slow)])
def test_int8_exports_agree_with_fp32_on_camvid_test_images(checkpoint, data, tmp_path, fmt):
    pytest.importorskip("nncf") if fmt == "openvino" else None
    path = tmp_path / ("q.onnx" if fmt == "onnx" else "q.xml")
    report = _export(checkpoint, path, "--format", fmt, "--int8", "--calibrate", "2")
    assert report["calibration_images"] == 2  # the two training images of the model's own data set
    model = load_model(checkpoint)
    x = model.preprocessing(_images(data, "test"))
    with torch.no_grad():
        reference = model(x)
    got = open_backend(path).logits(x)
    result = compare_logits(got, reference)
    miou = mean_iou(got.argmax(1), reference.argmax(1).numpy(), model.meta.num_classes)
    assert result["agreement"] >= INT8_AGREEMENT, result
    assert miou >= INT8_MIOU, miou
    assert report["keep_float"] == "ends" and report["float_nodes"] >= 3, report
    if fmt == "onnx":
        assert _float_convolutions(path) == 3  # the stem and LR-ASPP's two classifiers; every other one int8


def _float_convolutions(path: Path) -> int:
    """Convolutions of a QDQ graph whose weights do not come through a DequantizeLinear."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) > 10, len(convs)
    return sum(producer.get(node.input[1]) != "DequantizeLinear" for node in convs)


# The only check of the phone export in make test. Lowering to XNNPACK costs time per graph node, so it exports
# a 4-channel U-Net (about 14 s) rather than the LR-ASPP above (about 45 s in the two-worker suite); LR-ASPP and
# every other architecture go through ExecuTorch in tests/test_export_every_architecture.py (make test-all).
def test_executorch_program_matches_eager_and_carries_its_metadata(data, tmp_path):
    pytest.importorskip("executorch")
    from imseg.engine.export import export_safetensors
    from tests.helpers import small_model_with_meta

    model = small_model_with_meta()  # caffe preprocessing, named classes, odd ignore index: all must travel
    weights = export_safetensors(model, tmp_path / "m.safetensors")
    report = _export(weights, tmp_path / "m.pte", "--format", "executorch")
    assert report["relative_difference"] <= FP32_RTOL, report
    assert report["ops_outside_xnnpack"] == {}, report  # every operator of this net runs in XNNPACK
    runtime = open_backend(tmp_path / "m.pte")
    assert runtime.name == "executorch" and runtime.meta == model.meta and runtime.input_size == SIZE
    x = model.preprocessing(_images(data))
    with torch.no_grad():
        expected = model(x)
    assert compare_logits(runtime.logits(x), expected)["relative_difference"] <= FP32_RTOL


def test_predict_and_eval_run_an_onnx_file_like_its_checkpoint(exports, checkpoint, data, tmp_path):
    images = data / "test"
    for name, model_file in (("torch", checkpoint), ("onnx", exports["onnx"])):
        code, _, err = run_cli("predict", model_file, images, "--out", tmp_path / name)
        assert code == 0, err
        code, _, err = run_cli("eval", model_file, "--split", "test", "--out", tmp_path / f"{name}.json",
                               "--no-boundary", "--worst", "1")
        assert code == 0, err
    for image in images.glob("*.png"):
        torch_mask, onnx_mask = (np.asarray(Image.open(tmp_path / n / image.name)) for n in ("torch", "onnx"))
        assert (torch_mask == onnx_mask).mean() >= 0.999
        overlay = Image.open(tmp_path / "onnx" / f"{image.stem}_overlay.png")
        assert overlay.height > SIZE[0] and overlay.width == SIZE[1]  # the legend strip below the picture
    scores = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("torch", "onnx")}
    assert scores["onnx"]["backend"] == "onnxruntime" and scores["torch"]["backend"] == "torch"
    assert abs(scores["onnx"]["mIoU"] - scores["torch"]["mIoU"]) <= 1e-3


def test_wrong_backend_and_foreign_files_fail_in_one_line_naming_the_file(exports, checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"onnxruntime runs \.onnx files, not .*last\.pt"):
        open_backend(checkpoint, "onnxruntime")
    with pytest.raises(ValueError, match=r"m\.onnx is an exported onnxruntime file"):
        open_backend(exports["onnx"], "torch")
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1).eval(), (torch.randn(1, 3, 8, 8),), str(plain), dynamo=True)
    with pytest.raises(CheckpointError, match=r"plain\.onnx has no imseg metadata"):
        open_backend(plain)
    code, _, err = run_cli("predict", exports["onnx"], tmp_path, "--out", tmp_path / "o", "--mc-samples", "2")
    assert code == 2 and "--mc-samples" in err and len(err.strip().splitlines()) == 1


def test_a_missing_runtime_names_the_extra_to_install(checkpoint, tmp_path, monkeypatch):
    with pytest.raises(MissingExtraError, match=r"pip install 'imseg\[deploy\]'"):
        require("imseg_no_such_runtime", "deploy", "testing")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    code, _, err = run_cli("export", checkpoint, "--format", "openvino", "--out", tmp_path / "m.xml")
    assert code == 2 and "pip install 'imseg[deploy]'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_an_ir_that_openvino_cannot_run_at_another_size_fails_in_one_line_naming_static(checkpoint, tmp_path,
                                                                                         monkeypatch):
    """FCN-8s and DeconvNet meet this (docs/deploy.md): OpenVINO's CPU plugin rejects a dynamic Pad at run time."""
    pytest.importorskip("openvino")
    from imseg.deploy import openvino_export

    def refuse(self, batch):
        raise RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp:224:\n"
                           "[CPU] Pad node with name 'logits' Check 'getShape().isCompatible(dims)' failed\n"
                           "ParameterMismatch: Can not clone with new dims.")

    monkeypatch.setattr(openvino_export.OpenVinoBackend, "logits", refuse)
    code, _, err = run_cli("export", checkpoint, "--format", "openvino", "--out", tmp_path / "m.xml")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--static" in err and "[CPU] Pad node" in err and "Can not clone" in err and "m.xml" in err


def test_legend_lists_the_classes_present_with_their_colours():
    names = [f"class number {i}" for i in range(12)]
    palette = [(20 * i, 255 - 20 * i, 7) for i in range(12)]
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[:10], mask[30:] = 3, 255  # 255: ignore, never listed
    assert present_classes([mask], 12) == [0, 3]
    picture = Image.new("RGB", (60, 40), "grey")
    drawn = np.asarray(with_legend(picture, names, palette, present_classes([mask], 12)))
    strip = drawn[40:].reshape(-1, 3)
    colours = {tuple(c) for c in strip}
    assert tuple(palette[0]) in colours and tuple(palette[3]) in colours and tuple(palette[5]) not in colours
    everything = with_legend(picture, names, palette)  # all 12 entries wrap onto many lines at 60 px
    assert everything.width == 60 and everything.height > drawn.shape[0]
