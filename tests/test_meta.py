"""ModelMeta: one object for what a model file says beside its weights, the same through every format."""
from __future__ import annotations

import pytest
import torch

from imseg.engine.checkpoint import load_model, read_onnx_meta, save_checkpoint
from imseg.engine.export import export_onnx, export_safetensors
from imseg.meta import MetadataError, ModelMeta
from imseg.preprocessing import CAFFE
from tests.helpers import small_model_with_meta


@pytest.fixture(scope="module")
def model():
    return small_model_with_meta()


def test_meta_round_trips_through_a_dict(model):
    assert ModelMeta.from_dict(model.meta.to_dict()) == model.meta


def test_meta_round_trips_through_checkpoint_safetensors_and_onnx(model, tmp_path):
    pt = save_checkpoint({**model.meta.to_dict(), "state_dict": model.state_dict()}, tmp_path / "m.pt")
    st = export_safetensors(model, tmp_path / "m.safetensors")
    export_onnx(model, tmp_path / "m.onnx", size=(64, 64), check=False)
    x = torch.randn(1, 3, 64, 64)
    for path in (pt, st):
        loaded = load_model(path)
        assert loaded.meta == model.meta, path
        assert loaded.preprocessing == CAFFE and loaded.class_names == ["sky", "road", "car"]
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert read_onnx_meta(tmp_path / "m.onnx") == model.meta


def test_a_checkpoint_in_the_format_before_model_meta_still_loads(model, tmp_path):
    """Checkpoints written before ModelMeta had no ``meta_version`` and no ``data``; the config held it."""
    old = {k: v for k, v in model.meta.to_dict().items() if k not in ("meta_version", "data")}
    old["model"] = model.imseg_spec  # exactly what train.py stored
    path = save_checkpoint({**old, "state_dict": model.state_dict(), "config": {"data": {"name": "camvid"}},
                            "epoch": 3}, tmp_path / "old.pt")
    loaded = load_model(path)
    assert loaded.meta.data == {"name": "camvid"} and loaded.meta.class_names == model.meta.class_names
    assert loaded.meta.eval_size == (64, 96)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(ignore_index="255"), r"'ignore_index' must be an integer, got '255'"),
    (lambda d: d.update(eval_size=[64]), r"'eval_size' must be null or \[height, width\]"),
    (lambda d: d.update(palette=[[0, 0, 0]]), r"'palette' must hold 3 \[r, g, b\] colours"),
    (lambda d: d["model"].update(num_classes=0), r"'model.num_classes' must be at least 1"),
    (lambda d: d.pop("class_names"), r"metadata has no 'class_names'"),
])
def test_wrong_metadata_names_the_key(model, edit, message):
    d = model.meta.to_dict()
    edit(d)
    with pytest.raises(MetadataError, match=r"^m\.pt: " + message):
        ModelMeta.from_dict(d, "m.pt")
