"""Auto-DeepLab's architecture search (imseg.search): decoding (Viterbi over beta, cells from alpha), the
supernet, the bilevel steps touching only their own parameters and half of the data, resume, the
architecture files and the `imseg search` command, on a tiny synthetic dataset with tiny L and F."""
from __future__ import annotations

import itertools
import json
import random
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from imseg.engine.checkpoint import load_checkpoint
from imseg.engine.distributed import Context
from imseg.models import create_model
from imseg.models.autodeeplab import GENOTYPE, OPERATIONS, PATH, check_architecture, read_architecture
from imseg.search.config import search_config_from_dict
from imseg.search.decode import (count_paths, decode_architecture, decode_cell, random_architecture, random_path,
                                 viterbi_path, write_architecture)
from imseg.search.loop import arch_step, search, weight_step
from imseg.search.run import build_search_run
from imseg.search.space import ArchParameters, SuperNet, edge_offset, levels_at, transition_mask
from tests.helpers import run_cli

TF_GENOTYPE = [("atrous_5x5", 1), ("sep_3x3", 0), ("sep_3x3", 1), ("atrous_3x3", 0), ("sep_3x3", 3),
               ("sep_3x3", 1), ("sep_5x5", 4), ("sep_5x5", 2), ("sep_5x5", 3), ("atrous_5x5", 5)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Eight 24x32 images of two rectangles on a background; the masks say which is which."""
    root = tmp_path_factory.mktemp("search-data")
    g = np.random.default_rng(0)
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i in range(8):
        mask = np.zeros((24, 32), np.uint8)
        for cls in (1, 2):
            t, left = g.integers(0, 14), g.integers(0, 20)
            mask[t: t + 10, left: left + 12] = cls
        image = np.stack([mask * 100 + g.integers(0, 30, mask.shape) for _ in range(3)], -1).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def tiny_raw(root, out_dir, **sections) -> dict:
    raw = {
        "data": {"name": "folder", "root": str(root), "class_names": ["bg", "a", "b"], "crop_size": [24, 32],
                 "scale_range": [1.0, 1.0], "hflip": True, "batch_size": 2, "num_workers": 0},
        "space": {"layers": 1, "filter_multiplier": 1, "stem_channels": [4, 4], "aspp_rate": 8},
        "arch": {"start_epoch": 0},
        "search": {"epochs": 2, "out_dir": str(out_dir), "progress": False, "log_every": 1, "plots": False},
    }
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    return raw


def _normalised(beta: torch.Tensor) -> torch.Tensor:
    mask = transition_mask(beta.shape[0])
    return beta.masked_fill(~mask, -1e9).softmax(-1) * mask


def _brute_force_path(beta: torch.Tensor) -> tuple[int, ...]:
    """The best path by trying every sequence of levels that obeys the rules."""
    layers, best = beta.shape[0], (-1.0, None)
    for path in itertools.product(range(4), repeat=layers):
        if path[0] > 1 or any(abs(a - b) > 1 for a, b in zip(path, path[1:])):
            continue
        prob, prev = 1.0, 0
        for layer, level in enumerate(path):
            prob *= beta[layer, prev, level - prev + 1].item()
            prev = level
        best = max(best, (prob, path))
    return best[1]


# --------------------------------------------------------------------------- decoding


def test_viterbi_finds_the_best_path_where_greedy_does_not() -> None:
    beta = torch.zeros(2, 4, 3)
    beta[0, 0] = torch.tensor([0.0, 0.6, 0.4])  # from the stem: stride 4 looks better...
    beta[1, 0] = torch.tensor([0.0, 0.5, 0.5])
    beta[1, 1] = torch.tensor([0.05, 0.05, 0.9])  # ... but stride 8 then 16 wins: 0.4 * 0.9 > 0.6 * 0.5
    assert viterbi_path(beta) == (1, 2)


def test_viterbi_respects_the_stride_rules_and_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    for layers in (1, 3, 6):
        for _ in range(5):
            beta = _normalised(3 * torch.randn(layers, 4, 3, generator=g))
            path = viterbi_path(beta)
            check_architecture(TF_GENOTYPE, path, 1)  # starts at stride 4 or 8, one level per layer at most
            assert path == _brute_force_path(beta)
    # A beta that wants to get to stride 32 and stay gets a path that climbs one level per layer.
    logits = torch.zeros(4, 4, 3)
    logits[:, :, 2] = logits[:, 3, 1] = 5.0
    assert viterbi_path(_normalised(logits)) == (1, 2, 3, 3)


def test_cell_decoding_keeps_the_two_strongest_non_zero_inputs_and_their_best_operator() -> None:
    alpha = torch.full((20, 8), 0.1)
    for k, (op, source) in enumerate(TF_GENOTYPE):
        alpha[edge_offset(k // 2) + source, OPERATIONS.index(op)] = 0.6 if k % 2 == 0 else 0.5
    # "zero" is never a choice: an edge whose strongest weight is zero does not win on it.
    alpha[edge_offset(1) + 2, OPERATIONS.index("zero")] = 0.9
    alpha[edge_offset(4) + 4, OPERATIONS.index("zero")] = 0.95
    assert decode_cell(alpha) == tuple(TF_GENOTYPE)
    # Ties between inputs go to the earlier one; between operators to the first in OPERATIONS.
    assert decode_cell(torch.full((20, 8), 0.125))[:2] == (("sep_3x3", 0), ("sep_3x3", 1))


def test_path_counts_and_uniform_random_paths() -> None:
    assert [count_paths(n) for n in (1, 2, 3)] == [2, 5, 13]
    # The paper's "2.9e4 paths" for L = 12 is our count for 11 layers (12 cells with the first fixed at
    # stride 4); with the first cell at stride 4 or 8, as the paper's own rule says, 12 layers have 75025.
    assert count_paths(11) == 28657 and count_paths(12) == 75025
    rng = random.Random(0)
    counts = Counter(random_path(2, rng) for _ in range(5000))
    assert set(counts) == {(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)}
    assert all(abs(c / 5000 - 0.2) < 0.03 for c in counts.values())
    for seed in range(30):
        arch = random_architecture(6, 2, seed)
        assert check_architecture(arch.genotype, arch.path, 2) == arch
        assert all(a != b for (_, a), (_, b) in zip(arch.genotype[::2], arch.genotype[1::2]))  # distinct inputs
    assert random_architecture(6, 2, 3) == random_architecture(6, 2, 3) != random_architecture(6, 2, 4)


# --------------------------------------------------------------------------- supernet


def test_supernet_shapes_at_odd_sizes_and_arch_parameters() -> None:
    torch.manual_seed(0)
    net, arch = SuperNet(5, 3, 1, stem_channels=(4, 4), aspp_rate=8), ArchParameters(3)
    assert tuple(arch.alpha.shape) == (20, 8) and tuple(arch.beta.shape) == (3, 4, 3)
    assert arch.alpha.abs().max() < 0.01  # N(0, 1) * 1e-3
    beta = arch.beta_weights()
    # Normalised over each existing node's outgoing transitions; nothing from the nodes that do not exist.
    sums = beta.sum(-1)
    for layer in range(3):
        for level in range(4):
            assert sums[layer, level].item() == pytest.approx(1.0 if level in levels_at(layer - 1) else 0.0)
    assert beta[0, 0, 0] == 0  # the stem (stride 4) cannot go finer
    out = net(torch.randn(2, 3, 37, 53), arch.alpha_weights(), beta)
    assert out.shape == (2, 5, 37, 53)
    out.mean().backward()
    assert arch.alpha.grad.abs().sum() > 0 and arch.beta.grad[transition_mask(3)].abs().min() > 0
    assert net.cells["layer2_level3_from2"].edges[19].ops[0][1].stride == (1, 1)  # every op at stride 1
    assert not any(m.affine for m in net.cells["layer0_level0_from0"].edges[0].modules()
                   if isinstance(m, torch.nn.BatchNorm2d))  # no BN scale inside a candidate


# --------------------------------------------------------------------------- the bilevel loop


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_step_changes_only_its_own_parameters_on_its_own_half(data_root, tmp_path) -> None:
    cfg = search_config_from_dict(tiny_raw(data_root, tmp_path / "run"))
    run = build_search_run(cfg, Context(), lambda m: None)
    weights_half, arch_half = run.halves
    assert not set(weights_half) & set(arch_half) and sorted(weights_half + arch_half) == list(range(8))
    assert run.loaders[0].dataset.indices == weights_half and run.loaders[1].dataset.indices == arch_half
    run.train_net.train()
    (images, masks), (arch_images, arch_masks) = next(iter(run.loaders[0])), next(iter(run.loaders[1]))

    w0, a0 = _snapshot(run.net), _snapshot(run.arch)
    arch_step(run, arch_images, arch_masks, "test")
    assert _same(_snapshot(run.net), w0), "the architecture step changed network weights"
    assert not _same(_snapshot(run.arch), a0), "the architecture step left alpha and beta as they were"
    assert all(p.grad is None for p in run.net.parameters())  # not even computed

    w1, a1 = _snapshot(run.net), _snapshot(run.arch)
    weight_step(run, images, masks, "test")
    assert _same(_snapshot(run.arch), a1), "the weight step changed alpha or beta"
    assert not _same(_snapshot(run.net), w1), "the weight step left the network weights as they were"
    assert run.arch.alpha.grad is None and run.arch.beta.grad is None


def _final_arch(run_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["arch"]


def test_resumed_search_gives_the_same_alpha_and_beta(data_root, tmp_path) -> None:
    whole = tiny_raw(data_root, tmp_path / "whole")
    search(search_config_from_dict(whole), log=lambda m: None)
    # Stopped after one epoch, with a step checkpoint in the middle of it; resumed from there.
    parts = tiny_raw(data_root, tmp_path / "parts", search={"stop_after": 1, "checkpoint_every_steps": 1})
    search(search_config_from_dict(parts), log=lambda m: None)
    middle = tmp_path / "parts" / "checkpoints" / "step-00000001.pt"
    assert load_checkpoint(middle)["batch_in_epoch"] == 1
    parts["search"]["stop_after"] = None
    result = search(search_config_from_dict(parts), resume=middle, log=lambda m: None)
    expected, got = _final_arch(tmp_path / "whole"), _final_arch(tmp_path / "parts")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert not torch.equal(got["alpha"], load_checkpoint(middle)["arch"]["alpha"])  # alpha did move
    assert json.loads((tmp_path / "whole" / "found.json").read_text())["path"] == result["architecture"]["path"]
    # Every epoch's alpha and beta, decoded, are in arch.jsonl (epoch 0: the initial values).
    lines = [json.loads(line) for line in (tmp_path / "whole" / "arch.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in lines] == [0, 1, 2] and len(lines[-1]["alpha"]) == 20


def test_a_search_folder_is_not_resumed_by_accident(data_root, tmp_path) -> None:
    raw = tiny_raw(data_root, tmp_path / "run", search={"epochs": 1})
    search(search_config_from_dict(raw), log=lambda m: None)
    with pytest.raises(ValueError, match="already holds a run"):
        search(search_config_from_dict(raw), log=lambda m: None)
    raw["space"]["layers"] = 2
    with pytest.raises(RuntimeError, match="searched space"):
        search(search_config_from_dict(raw), resume="auto", log=lambda m: None)


# --------------------------------------------------------------------------- architectures


def _trains_a_step(model: torch.nn.Module, classes: int = 3) -> None:
    model.train()
    before = _snapshot(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, target = torch.randn(2, 3, 37, 53), torch.randint(0, classes, (2, 37, 53))
    out = model(x)
    assert out.shape == (2, classes, 37, 53)
    loss = F.cross_entropy(out, target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not _same(_snapshot(model), before)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_and_decoded_architectures_build_and_train(seed: int) -> None:
    torch.manual_seed(seed)
    arch = random_architecture(4, 2, seed)
    _trains_a_step(create_model("autodeeplab", 3, **arch.as_kwargs()))
    beta = _normalised(torch.randn(4, 4, 3))
    decoded = decode_architecture(torch.randn(20, 8).softmax(-1), beta, 2)
    _trains_a_step(create_model("autodeeplab", 3, genotype=decoded.genotype, path=decoded.path,
                                filter_multiplier=decoded.filter_multiplier))


def test_every_operator_builds_at_both_strides() -> None:
    genotype = [(op, k % 2) for k, op in enumerate(OPERATIONS[:-1] * 2)][:10]  # each op on a cell input
    model = create_model("autodeeplab", 3, genotype=genotype, path=[1, 2, 1, 0], filter_multiplier=2)
    _trains_a_step(model)  # path up (stride 2 on every op), down (upsampled) and level
    assert model.encoder.strides == [4, 4] and model.encoder.low_level_cell is None  # ends at stride 4
    assert [tuple(b[0].dilation) for b in model.aspp.convs[1:4]] == [(24, 24), (48, 48), (72, 72)]


def test_shipped_presets_are_the_papers_network(tmp_path) -> None:
    for name, filters in (("autodeeplab_s", 20), ("autodeeplab_m", 32), ("autodeeplab_l", 48)):
        assert read_architecture(name) == check_architecture(TF_GENOTYPE, PATH, filters)
    assert GENOTYPE[0] == ("atrous", 5, 1)
    generic, preset = create_model("autodeeplab", 19), create_model("autodeeplab_s", 19)
    assert sum(p.numel() for p in generic.parameters()) == sum(p.numel() for p in preset.parameters()) == 10147427
    assert list(generic.state_dict()) == list(preset.state_dict())


def test_architecture_files_and_self_contained_specs(tmp_path) -> None:
    arch = random_architecture(3, 2, 7)
    path = write_architecture(arch, tmp_path / "found.json", about="test")
    assert read_architecture(path) == arch
    model = create_model("autodeeplab", 3, architecture=str(path), filter_multiplier=3)  # F overridden
    spec = model.imseg_spec["kwargs"]
    assert spec["architecture"] is None and spec["path"] == list(arch.path) and spec["filter_multiplier"] == 3
    path.unlink()  # a checkpoint's spec rebuilds the model without the file
    rebuilt = create_model("autodeeplab", 3, **spec)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kwargs, message", [
    ({"path": [2, 3]}, "starts at level 0 or 1"),
    ({"path": [0, 2]}, "moves at most one level per cell, but cell 1 goes from 0 to 2"),
    ({"path": [0, 4]}, "levels 0..3"),
    ({"genotype": [("zero", 0)] * 10}, r"genotype\[0\] \(block 0\).*sep_3x3"),
    ({"genotype": TF_GENOTYPE[:9] + [("sep_3x3", 7)]}, r"genotype\[9\] \(block 4\).*input 0..5"),
    ({"genotype": TF_GENOTYPE[:4]}, "10 \\[operator, input\\] pairs"),
    ({"filter_multiplier": 0}, "positive integer"),
    ({"architecture": "nowhere.json"}, "neither a file nor one of: autodeeplab_l, autodeeplab_m, autodeeplab_s"),
])
def test_bad_architectures_fail_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        create_model("autodeeplab", 3, **kwargs)
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_an_architecture(tmp_path) -> None:
    (tmp_path / "x.json").write_text('{"genotype": []}')
    with pytest.raises(ValueError, match="not an Auto-DeepLab architecture file"):
        read_architecture(tmp_path / "x.json")


# --------------------------------------------------------------------------- the command


def test_imseg_search_end_to_end_writes_an_architecture_create_model_builds(data_root, tmp_path) -> None:
    raw = tiny_raw(data_root, tmp_path / "run", arch={"start_epoch": 1}, search={"plots": True})
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    code, out, err = run_cli("search", config, "--set", "search.seed=1")
    assert code == 0, out + err
    run = tmp_path / "run"
    assert f"found architecture: {run / 'found.json'}" in out
    for name in ("alpha.png", "beta.png", "trellis.png", "config.yaml", "metrics.jsonl", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["arch_loss"] is None for e in epochs if e["type"] == "epoch"] == [True, False]  # warm-up first
    _trains_a_step(create_model("autodeeplab", 3, architecture=str(run / "found.json")))

    code, out, err = run_cli("search", config, "--random", tmp_path / "random.json")
    assert code == 0 and "wrote" in out, out + err
    assert read_architecture(tmp_path / "random.json") == random_architecture(1, 1, 0)

    code, out, err = run_cli("search", config, "--set", "space.layers=0")
    assert code == 2 and err.strip() == "imseg search: error: space.layers: expected a number >= 1, got 0 in " \
        f"{config}"


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_search_under_torchrun_keeps_alpha_and_beta_in_step(data_root, tmp_path) -> None:
    """2 processes (gloo): DDP on the weights, averaged architecture steps; the search checks after every
    epoch that both processes hold the same alpha and beta (else it stops), so finishing is the test."""
    import os
    import subprocess
    import sys

    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(tiny_raw(data_root, tmp_path / "run", data={"batch_size": 4})))
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "imseg.cli", "search", str(config), "--nproc", "2"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "x 2 processes" in proc.stdout
    _trains_a_step(create_model("autodeeplab", 3, architecture=str(tmp_path / "run" / "found.json")))


def test_shipped_search_configs_load() -> None:
    """configs/search/ holds search configs (configs/*.yaml are training configs, loaded by other tests)."""
    from pathlib import Path

    from imseg.search.config import load_search_config

    paths = sorted((Path(__file__).parents[1] / "configs" / "search").glob("*.yaml"))
    assert paths
    for path in paths:
        load_search_config(path)  # every key known, typed and in range


def test_imseg_train_retrains_a_found_architecture_whose_checkpoint_needs_no_file(data_root, tmp_path) -> None:
    from imseg.engine.checkpoint import load_model

    found = write_architecture(random_architecture(2, 1, 5), tmp_path / "found.json")
    cfg = {"model": {"name": "autodeeplab", "args": {"architecture": str(found), "filter_multiplier": 2}},
           "data": {"name": "folder", "root": str(data_root), "class_names": ["bg", "a", "b"], "crop_size": [24, 32],
                    "scale_range": [1.0, 1.0], "batch_size": 4, "num_workers": 0, "val_split": ""},
           "train": {"epochs": 1, "out_dir": str(tmp_path / "train"), "progress": False}}
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(cfg))
    code, out, err = run_cli("train", config)
    assert code == 0, out + err
    found.unlink()
    model = load_model(tmp_path / "train" / "checkpoints" / "best.pt")
    assert model.imseg_spec["kwargs"]["filter_multiplier"] == 2
    with torch.no_grad():
        assert model(torch.randn(1, 3, 29, 41)).shape == (1, 3, 29, 41)
