"""Training, resume, checkpoints and prediction, end to end on real CamVid pixels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imseg.config import config_from_dict
from imseg.engine.checkpoint import CheckpointError, load_checkpoint, load_model, read_onnx_meta, save_checkpoint
from imseg.engine.inference import Inference, infer_logits
from imseg.engine.predict import predict
from imseg.engine.train import train
from imseg.data import build_dataset
from tests.helpers import run_cli, tiny_camvid_folder, tiny_config


@pytest.fixture(scope="module")
def tiny_root(camvid_root, tmp_path_factory):
    return tiny_camvid_folder(camvid_root, tmp_path_factory.mktemp("tiny"))


def _quiet(msg: str) -> None:
    pass


# Trained once per module and only read by the tests that use them.
@pytest.fixture(scope="module")
def plain_run(tiny_root, tmp_path_factory):
    """One epoch of the tiny UNet (torchvision preprocessing): checkpoints/last.pt and best.pt."""
    out = tmp_path_factory.mktemp("plain")
    train(config_from_dict(tiny_config(tiny_root, out, **{"train.epochs": 1})), log=_quiet)
    return out


@pytest.fixture(scope="module")
def caffe_run(tiny_root, tmp_path_factory):
    """Three epochs of the tiny UNet with caffe preprocessing (BGR, mean subtraction, no scaling)."""
    out = tmp_path_factory.mktemp("caffe")
    raw = tiny_config(tiny_root, out, **{"train.epochs": 3})
    raw["model"]["preprocessing"] = "caffe"
    cfg = config_from_dict(raw)
    train(cfg, log=_quiet)
    return out, cfg


def test_overfits_two_camvid_images(tiny_root, tmp_path):
    # The crop is the 64x96 image itself: tiny_config's 96x128 crops would be half ignored padding, computed
    # for nothing. 60 steps end at 0.89-0.93 depending on the thread count
    # (the path of an overfitting run is chaotic in the last bits); 80 reach 0.95.
    cfg = config_from_dict(tiny_config(tiny_root, tmp_path / "run", **{"train.epochs": 80, "train.val_every": 80,
                                                                       "train.save_every": 80,
                                                                       "data.crop_size": [64, 96]}))
    cfg.data.val_split = "train"  # validate on the very images it trains on
    result = train(cfg, log=_quiet)
    assert result["val"]["pixel_accuracy"] > 0.90, result["val"]["pixel_accuracy"]


def test_resume_gives_identical_weights(tiny_root, tmp_path):
    straight = config_from_dict(tiny_config(tiny_root, tmp_path / "straight", **{"train.epochs": 2}))
    train(straight, log=_quiet)

    # Stopped after one epoch of a two-epoch schedule, as a killed job would be.
    first = config_from_dict(tiny_config(tiny_root, tmp_path / "split", **{"train.epochs": 2, "train.stop_after": 1}))
    train(first, log=_quiet)
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["epoch"] == 1
    second = config_from_dict(tiny_config(tiny_root, tmp_path / "split", **{"train.epochs": 2}))
    train(second, resume=tmp_path / "split" / "checkpoints" / "last.pt", log=_quiet)

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    # The optimiser state must match too, or the next epoch would diverge.
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])


def test_resume_refuses_a_checkpoint_of_another_model(tiny_root, plain_run, tmp_path):
    other = config_from_dict(
        tiny_config(tiny_root, tmp_path / "b", **{"model.args": {"encoder": "resnet34"}, "train.epochs": 1})
    )
    with pytest.raises(CheckpointError, match="resnet34"):
        train(other, resume=plain_run / "checkpoints" / "last.pt", log=_quiet)


def test_best_checkpoint_holds_weights_only_and_is_no_resume_point(tiny_root, plain_run, tmp_path):
    cfg = config_from_dict(tiny_config(tiny_root, tmp_path / "a", **{"train.epochs": 1}))
    best = plain_run / "checkpoints" / "best.pt"
    last = plain_run / "checkpoints" / "last.pt"
    state = load_checkpoint(best)
    assert "optimizer" not in state and "optimizer" in load_checkpoint(last)
    # Adam keeps two moments per weight: dropping them shrinks the file.
    assert best.stat().st_size < 0.5 * last.stat().st_size
    assert load_model(best) is not None  # still enough for eval, predict and export
    with pytest.raises(CheckpointError, match="best.pt.*weights only|weights only.*last.pt"):
        train(cfg, resume=best, log=_quiet)


def test_caffe_checkpoint_predicts_like_the_training_pipeline(caffe_run, tmp_path):
    run, cfg = caffe_run
    ckpt = run / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    assert state["preprocessing"]["channel_order"] == "BGR"
    assert state["preprocessing"]["mean"] == pytest.approx([103.939, 116.779, 123.68])

    model = load_model(ckpt)
    ds = build_dataset(cfg.data, "train", train=False)
    image, _ = ds[0]
    from imseg.preprocessing import CAFFE, TORCHVISION

    pipeline = infer_logits(model, image[None], Inference(CAFFE))[0].argmax(0).numpy()
    # `imseg predict`, as a user runs it, reads the preprocessing from the checkpoint.
    from PIL import Image

    assert run_cli("predict", ckpt, ds.files[0][0], "--out", tmp_path / "pred")[0] == 0
    through_cli = np.asarray(Image.open(tmp_path / "pred" / ds.files[0][0].name))
    np.testing.assert_array_equal(through_cli, pipeline)
    np.testing.assert_array_equal(predict(model, ds.files[0][0]), pipeline)  # and the Python API
    # The check has teeth: normalising the torchvision way changes the masks.
    wrong = infer_logits(model, image[None], Inference(TORCHVISION))[0].argmax(0).numpy()
    assert (wrong != pipeline).mean() > 0.01


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint({"x": torch.ones(3)}, path)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"x": torch.zeros(3)}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no stray temporary file


def test_truncated_checkpoint_fails_clearly(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint({"x": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


def test_predict_accepts_paths_arrays_and_pil(tiny_root, plain_run):
    from PIL import Image

    model = load_model(plain_run / "checkpoints" / "last.pt")
    path = sorted((tiny_root / "images").iterdir())[0]
    from_path = predict(model, path)
    pil = Image.open(path).convert("RGB")
    np.testing.assert_array_equal(predict(model, pil), from_path)
    np.testing.assert_array_equal(predict(model, np.asarray(pil)), from_path)
    assert from_path.shape == (96, 128)
    with pytest.raises(ValueError, match="channels"):
        predict(model, np.zeros((10, 10, 4), dtype=np.uint8))


def test_bf16_autocast_trains_on_cpu(tiny_root, tmp_path):
    cfg = config_from_dict(tiny_config(tiny_root, tmp_path / "amp", **{"train.epochs": 1, "train.amp": "bf16"}))
    result = train(cfg, log=_quiet)
    assert result["val"]["mIoU"] is not None
    entries = (tmp_path / "amp" / "metrics.jsonl").read_text().splitlines()
    assert all(np.isfinite(json.loads(e).get("loss", 0.0)) for e in entries)


def test_grad_accumulation_counts_optimizer_steps(tiny_root, tmp_path):
    cfg = config_from_dict(
        tiny_config(tiny_root, tmp_path / "acc", **{"train.epochs": 1, "train.grad_accum": 2})
    )
    cfg.data.batch_size = 1  # 2 images -> 2 batches -> 1 optimiser step
    train(cfg, log=_quiet)
    state = load_checkpoint(tmp_path / "acc" / "checkpoints" / "last.pt")
    assert state["global_step"] == 1
    assert state["scheduler"]["last_epoch"] == 1


def test_max_steps_ends_part_way_through_an_epoch_with_the_schedule_spent(tiny_root, tmp_path):
    # 2 images, batch 1: 2 steps per epoch, so 3 steps end half-way through epoch 2.
    cfg = config_from_dict(tiny_config(tiny_root, tmp_path / "it", **{
        "train.epochs": 50, "train.max_steps": 3, "optim.name": "sgd", "optim.lr": 0.1, "optim.min_lr": 0.0}))
    cfg.data.batch_size = 1
    train(cfg, log=_quiet)
    state = load_checkpoint(tmp_path / "it" / "checkpoints" / "last.pt")
    assert state["global_step"] == 3 and state["epoch"] == 2
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # poly reached its end
    log = [json.loads(line) for line in (tmp_path / "it" / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log if e["type"] == "epoch"] == [1, 2]
    assert "val_mIoU" in [e for e in log if e["type"] == "epoch"][-1]  # the partial last epoch is validated


def test_bn_momentum_overrides_every_batchnorm(tiny_root, tmp_path):
    # One step on the same batch from the same initial weights: running_var = (1 - m) * 1 + m * batch_var,
    # so the momentum-0.01 run must sit 1/100 as far from 1 as the momentum-1 run, in every BatchNorm.
    states = {}
    for m in (0.01, 1.0):
        cfg = config_from_dict(tiny_config(tiny_root, tmp_path / str(m), **{
            "train.epochs": 1, "train.max_steps": 1, "train.bn_momentum": m, "data.val_split": ""}))
        train(cfg, log=_quiet)
        states[m] = load_checkpoint(tmp_path / str(m) / "checkpoints" / "last.pt")["state_dict"]
    keys = [k for k in states[1.0] if k.endswith("running_var")]
    assert len(keys) > 10
    for k in keys:
        assert torch.allclose(states[0.01][k] - 1, 0.01 * (states[1.0][k] - 1), atol=1e-5), k
    with pytest.raises(ValueError, match="bn_momentum"):
        train(config_from_dict(tiny_config(tiny_root, tmp_path / "bad", **{"train.bn_momentum": 0.0})), log=_quiet)


def test_composite_loss_from_the_config_trains(tiny_root, tmp_path):
    terms = [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5}, {"name": "boundary", "weight": 0.2}]
    cfg = config_from_dict(tiny_config(tiny_root, tmp_path / "loss", **{"train.epochs": 1}))
    cfg.loss.terms = terms
    cfg.loss.class_weights = "median_frequency"
    result = train(cfg, log=_quiet)
    assert result["val"]["mIoU"] is not None
    cfg.loss.terms = [{"name": "dice", "smoth": 1.0}]
    cfg.train.out_dir = str(tmp_path / "bad-loss")
    with pytest.raises(ValueError, match="smoth"):
        train(cfg, log=_quiet)


def test_export_safetensors_and_onnx_round_trip(tiny_root, caffe_run, tmp_path):
    ckpt = caffe_run[0] / "checkpoints" / "last.pt"
    image = sorted((tiny_root / "images").iterdir())[0]

    assert run_cli("export", ckpt, "--format", "safetensors", "--out", tmp_path / "model.safetensors")[0] == 0
    exported = load_model(tmp_path / "model.safetensors")
    assert exported.preprocessing.channel_order == "BGR"  # the preprocessing travels with the weights
    np.testing.assert_array_equal(predict(exported, image), predict(load_model(ckpt), image))

    code, out, err = run_cli("export", ckpt, "--out", tmp_path / "model.onnx", "--size", "96", "128")
    assert code == 0, err
    report = json.loads(out)
    assert report["check_size"] == [113, 115]  # checked at another size than exported
    assert report["max_abs_difference"] <= 1e-4 * max(1.0, report["max_abs_logit"])
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["preprocessing"]["channel_order"] == "BGR" and len(meta["class_names"]) == 11
    assert read_onnx_meta(tmp_path / "model.onnx").preprocessing.channel_order == "BGR"  # inside the graph too
    # predict runs the .onnx in onnxruntime, normalising as its metadata says (BGR here): the checkpoint's masks.
    code, _, err = run_cli("predict", tmp_path / "model.onnx", image, "--out", tmp_path / "masks")
    assert code == 0, err
    from PIL import Image

    onnx_mask = np.asarray(Image.open(tmp_path / "masks" / image.name))
    assert (onnx_mask == predict(load_model(ckpt), image)).mean() >= 0.999  # ties may break either way


def test_predict_with_monte_carlo_dropout_writes_uncertainty_maps(tiny_root, plain_run, tmp_path):
    from PIL import Image

    raw = tiny_config(tiny_root, tmp_path / "bayes", **{"train.epochs": 1})
    raw["model"] = {"name": "bayesian_segnet_basic", "args": {}}
    train(config_from_dict(raw), log=_quiet)
    ckpt = tmp_path / "bayes" / "checkpoints" / "last.pt"
    assert run_cli("predict", ckpt, tiny_root / "images", "--out", tmp_path / "pred", "--mc-samples", "4")[0] == 0
    for image in (tiny_root / "images").iterdir():
        entropy = np.asarray(Image.open(tmp_path / "pred" / f"{image.stem}_entropy.png"))
        assert entropy.shape == (96, 128)
        assert entropy.std() > 0  # dropout disagrees more in some places than others
        assert Image.open(tmp_path / "pred" / image.name).mode == "P"
    # A model without dropout cannot be sampled: the error says so.
    code, _, err = run_cli("predict", plain_run / "checkpoints" / "last.pt", tiny_root / "images", "--out",
                           tmp_path / "p2", "--mc-samples", "2")
    assert code == 2 and "dropout" in err
