"""model.init_from: a run that starts from another run's weights, with a fresh optimiser and schedule."""
from __future__ import annotations

import pytest
import torch

from imseg.config import config_from_dict
from imseg.engine.checkpoint import CheckpointError, load_checkpoint, load_model
from imseg.engine.distributed import Context
from imseg.engine.export import export_safetensors
from imseg.engine.run_setup import build_run
from imseg.engine.train import train
from imseg.pretrained import save_pretrained
from tests.helpers import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:split 'val' of")  # the tiny folder validates on its own images


def _cfg(root, out_dir, **overrides):
    return config_from_dict(tiny_config(root, out_dir, **{
        "data.crop_size": [64, 96], "model.name": "lraspp",
        "model.args": {"encoder": "mobilenet_v3_small"}, **overrides}))


@pytest.fixture(scope="module")
def first_run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("first")
    train(_cfg(tiny_root, out / "run", **{"train.epochs": 1}))
    return out / "run" / "checkpoints"


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_every_model_file_kind_starts_the_model_with_its_weights(first_run, tiny_root, tmp_path):
    saved = load_checkpoint(first_run / "best.pt")["state_dict"]
    folder = save_pretrained(load_model(first_run / "best.pt"), tmp_path / "folder")
    exported = export_safetensors(load_model(first_run / "best.pt"), tmp_path / "model.safetensors")
    fresh = _state(build_run(_cfg(tiny_root, tmp_path / "fresh"), Context(), log=lambda m: None).model)
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved)  # the seed alone would not give them
    for source in (first_run / "best.pt", folder, exported):
        messages: list[str] = []
        cfg = _cfg(tiny_root, tmp_path / "second", **{"model.init_from": str(source)})
        run = build_run(cfg, Context(), log=messages.append)
        state = _state(run.model)
        assert all(torch.equal(state[k], saved[k]) for k in saved), source
        assert any("model.init_from" in m for m in messages)
        assert run.optimizer.state == {}  # nothing but the weights came over


def test_a_second_phase_trains_on_from_the_loaded_weights(first_run, tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path / "second", **{"train.epochs": 1, "model.init_from": str(first_run / "best.pt"),
                                                  "optim.lr": 1e-4})
    train(cfg)
    before = load_checkpoint(first_run / "best.pt")["state_dict"]
    after = load_checkpoint(tmp_path / "second" / "checkpoints" / "last.pt")
    assert after["epoch"] == 1  # a fresh schedule, not the first run's epoch count
    assert any(not torch.equal(after["state_dict"][k], before[k]) for k in before)
    assert after["config"]["model"]["init_from"] == str(first_run / "best.pt")


def test_a_file_for_another_class_count_fails_naming_the_key_and_the_tensor(first_run, tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path / "other", **{"model.init_from": str(first_run / "best.pt")})
    cfg.data.class_names = cfg.data.class_names[:5]  # a 5-class run
    with pytest.raises(CheckpointError, match=r"model.init_from: checkpoint .*best.pt does not fit .* 5 classes.*is \[11"):
        build_run(cfg, Context(), log=lambda m: None)


def test_a_missing_file_fails_in_one_line(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path / "run", **{"model.init_from": str(tmp_path / "nope.pt")})
    with pytest.raises(CheckpointError, match=r"model.init_from: model file .*nope.pt does not exist"):
        build_run(cfg, Context(), log=lambda m: None)


def test_other_class_names_are_named_in_the_log(first_run, tiny_root, tmp_path):
    names = [f"c{i}" for i in range(11)]
    cfg = _cfg(tiny_root, tmp_path / "renamed", **{"model.init_from": str(first_run / "best.pt")})
    cfg.data.class_names = names
    messages: list[str] = []
    build_run(cfg, Context(), log=messages.append)
    assert any("was trained on classes" in m and "c10" in m for m in messages)


def test_mismatched_tensors_can_keep_their_random_initialisation(first_run, tiny_root, tmp_path):
    saved = load_checkpoint(first_run / "best.pt")["state_dict"]

    def five_class_run(**overrides):
        cfg = _cfg(tiny_root, tmp_path / "five", **overrides)
        cfg.data.class_names = cfg.data.class_names[:5]
        messages: list[str] = []
        return _state(build_run(cfg, Context(), log=messages.append).model), messages

    random_init, _ = five_class_run()  # the same seed, no file
    state, messages = five_class_run(**{"model.init_from": str(first_run / "best.pt"),
                                        "model.init_mismatched": "random"})
    differ = [k for k in state if state[k].shape != saved[k].shape]
    assert differ and all(torch.equal(state[k], random_init[k]) for k in differ)  # the classifiers
    assert all(torch.equal(state[k], saved[k]) for k in state if k not in differ)
    assert any(f"{len(differ)} tensors differ in shape" in m and differ[0] in m for m in messages)
