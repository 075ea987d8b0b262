"""Precision that adapts to the CPU, and training fixed to a time budget."""
from __future__ import annotations

import itertools
import math
import time
import warnings

import pytest
import torch
import yaml

from imseg import machine
from imseg.config import config_from_dict, load_config
from imseg.engine import amp_probe, budget, runtime
from imseg.engine.checkpoint import load_checkpoint
from imseg.engine.train import train
from tests.helpers import tiny_config

CPU = torch.device("cpu")


# ------------------------------------------------------------------ precision


@pytest.mark.parametrize("native, expected", [(False, None), (True, torch.bfloat16)])
def test_auto_is_bf16_only_where_the_cpu_has_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: native)
    assert runtime.resolve_amp("auto", CPU) is expected
    assert runtime.resolve_amp("none", CPU) is None


def test_explicit_bf16_on_an_emulating_cpu_runs_but_warns_once_with_the_slowdown(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(runtime, "bf16_slowdown", lambda: 34.6)
    monkeypatch.setattr(runtime, "_warned_slow_bf16", False)
    with pytest.warns(RuntimeWarning, match=r"34\.6x slower under bf16 autocast.*train\.amp=auto"):
        assert runtime.resolve_amp("bf16", CPU) is torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert runtime.resolve_amp("bf16", CPU) is torch.bfloat16


def test_native_bf16_gives_no_warning(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(runtime, "_warned_slow_bf16", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_amp("bf16", CPU) is torch.bfloat16


def test_kernel_caps_turn_native_bf16_off(monkeypatch):
    # A CPU with AVX512-BF16 that is told to run AVX2 kernels emulates bf16 like an AVX2 CPU.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert machine.cpu_supports_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not machine.cpu_supports_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert machine.cpu_supports_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not machine.cpu_supports_bf16()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert not machine.cpu_supports_bf16()


def test_machine_info_names_the_cpu_its_extensions_threads_and_a_matmul_probe():
    info = machine.machine_info()
    assert info["cpu"] and info["torch_threads"] == torch.get_num_threads()
    assert set(info["cpu_flags"]) <= set(machine._FLAGS)
    assert info["isa_caps"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["matmul_fp32_gflops"] > 0 and isinstance(info["native_bf16"], bool)
    assert info["cpu"] in machine.describe(info) and "GFLOP/s" in machine.describe(info)
    assert machine.bf16_slowdown(repeats=1) > 0


def test_every_shipped_config_and_recipe_adapts_its_precision():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "configs").glob("*.yaml")) + sorted((root / "benchmarks" / "recipes").glob("*.yaml"))
    assert len(files) > 20
    for path in files:
        assert load_config(path).train.amp == "auto", path.name


def test_auto_precision_keeps_bf16_only_where_it_is_measurably_faster():
    order = []

    def timer(seconds):
        def time_steps(dtype):
            order.append(dtype)
            return seconds[dtype].pop(0)
        return time_steps

    # Each precision's faster round counts; the rounds alternate so a machine slowing down penalises neither.
    choice = amp_probe.probe(timer({None: [1.0, 0.8], torch.bfloat16: [0.7, 0.9]}))
    assert order == [None, torch.bfloat16, None, torch.bfloat16]
    assert (choice.float32_seconds, choice.bf16_seconds, choice.chosen) == (0.8, 0.7, "bf16")
    assert amp_probe.choose(2.07, 2.62).chosen == "none"  # U-Net ResNet-18 on the Xeon of amp_probe.py
    assert amp_probe.choose(1.0, 0.96).chosen == "none"  # 4% is not worth bf16's numerics
    assert amp_probe.choose(1.0, 0.95).chosen == "bf16"
    assert "0.900 s under bf16" in amp_probe.choose(0.75, 0.90).describe()


def _native_bf16_cpu(monkeypatch, float32_seconds, bf16_seconds):
    """A CPU that reports native bf16 and whose timed steps take the given seconds per precision."""
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(amp_probe, "MIN_RUN_STEPS", 0)  # the tiny runs here are timed all the same
    seconds = {None: float32_seconds, torch.bfloat16: bf16_seconds}
    monkeypatch.setattr(amp_probe, "rehearsal_timer", lambda *args: lambda dtype: seconds[dtype])


def test_auto_precision_on_a_native_bf16_cpu_is_timed_written_into_the_config_and_kept_on_resume(
        tiny_root, tmp_path, monkeypatch):
    _native_bf16_cpu(monkeypatch, float32_seconds=0.5, bf16_seconds=0.3)
    logged = []
    cfg = _cfg(tiny_root, tmp_path / "auto", **{"train.amp": "auto", "train.max_steps": 4, "train.stop_after": 1})
    summary = train(cfg, log=logged.append)
    choice = summary["amp_choice"]
    assert (choice["float32_seconds"], choice["bf16_seconds"], choice["chosen"]) == (0.5, 0.3, "bf16")
    assert summary["resolved_amp"] == "bf16"
    assert any("training in bf16 autocast" in line for line in logged)
    assert any("with torch.bfloat16 autocast" in line for line in logged)
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["train"]["amp"] == "bf16"

    # Resumed where float32 now times faster: the run keeps the precision it started with.
    _native_bf16_cpu(monkeypatch, float32_seconds=0.3, bf16_seconds=0.5)
    logged.clear()
    cfg = _cfg(tiny_root, tmp_path / "auto", **{"train.amp": "auto", "train.max_steps": 4})
    resumed = train(cfg, resume="auto", log=logged.append)
    assert resumed["amp_choice"] is None and resumed["resolved_amp"] == "bf16"
    assert any("chose train.amp=bf16; keeping it" in line for line in logged)


def test_auto_precision_timing_leaves_no_trace_in_the_weights(tiny_root, tmp_path, monkeypatch):
    # Real rehearsals on a fake clock: both precisions time the same, so float32 is kept, and the
    # weights are those of a run told train.amp=none from the start.
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(amp_probe, "MIN_RUN_STEPS", 0)
    _fake_clock(monkeypatch, 0.5)
    summary = train(_cfg(tiny_root, tmp_path / "auto", **{"train.amp": "auto", "train.max_steps": 3}),
                    log=lambda m: None)
    assert summary["amp_choice"]["chosen"] == "none" and summary["resolved_amp"] == "none"
    assert summary["amp_choice"]["float32_seconds"] == summary["amp_choice"]["bf16_seconds"] == 0.5
    train(_cfg(tiny_root, tmp_path / "plain", **{"train.amp": "none", "train.max_steps": 3}), log=lambda m: None)
    reference, weights = _weights(tmp_path / "plain"), _weights(tmp_path / "auto")
    for key, value in reference.items():
        assert torch.equal(value, weights[key]), key


def test_auto_precision_does_not_time_a_run_too_short_to_win_the_timing_back(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(amp_probe, "rehearsal_timer", lambda *args: pytest.fail("a short run was timed"))
    logged = []
    summary = train(_cfg(tiny_root, tmp_path / "short", **{"train.amp": "auto", "train.max_steps": 3}),
                    log=logged.append)
    assert summary["amp_choice"] is None and summary["resolved_amp"] == "none"
    assert any("3 steps are too few to time both precisions" in line for line in logged)
    assert not any("autocast" in line for line in logged)


def test_a_time_budget_counts_the_precision_timing_as_spent(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    _fake_clock(monkeypatch, 0.5)
    summary = train(_cfg(tiny_root, tmp_path / "auto", **{"train.amp": "auto", "train.time_budget_minutes": 0.5}),
                    log=lambda m: None)
    # The precision timing reads the clock before and after 2 x 2 rehearsals of 1 + 3 steps (two reads each).
    probe = 0.5 * (2 * 2 * 2 * (budget.WARMUP_STEPS + budget.TIMED_STEPS) + 1)
    assert summary["amp_choice"]["probe_seconds"] == probe == 16.5
    plan = summary["budget"]
    assert plan["rehearsal_seconds"] == probe + 0.5 * (2 * (budget.WARMUP_STEPS + budget.TIMED_STEPS) + 1)
    assert summary["total_steps"] == math.floor((0.5 * 60 * (1 - budget.MARGIN) - plan["rehearsal_seconds"]) / 0.5)


# ------------------------------------------------------------------ step arithmetic


def test_validations_counted_every_val_every_epochs_and_at_the_end():
    assert budget.validations(10, steps_per_epoch=5, val_every=1, has_val=True) == 2
    assert budget.validations(11, steps_per_epoch=5, val_every=2, has_val=True) == 2  # epochs 2 and 3 (the end)
    assert budget.validations(20, steps_per_epoch=5, val_every=2, has_val=True) == 2
    assert budget.validations(20, steps_per_epoch=5, val_every=2, has_val=False) == 0


def test_steps_within_is_the_largest_count_that_fits():
    # 2 s a step, 10 steps an epoch, a 15 s validation after every epoch, 100 s:
    # 27 steps (3 epochs, 3 validations) cost 54 + 45 = 99 s; 28 steps cost 101 s.
    assert budget.steps_within(100, 2.0, 15.0, 10, 1, True) == 27
    assert budget.steps_within(100, 2.0, 0.0, 10, 1, False) == 50
    assert budget.steps_within(1, 2.0, 15.0, 10, 1, True) == 1  # never 0 steps
    for total in range(5, 400, 7):  # brute force agrees
        n = budget.steps_within(total, 1.5, 4.0, 6, 2, True)
        cost = lambda k: k * 1.5 + budget.validations(k, 6, 2, True) * 4.0  # noqa: E731
        assert n == 1 or cost(n) <= total
        assert cost(n + 1) > total


def test_replanned_steps_is_the_largest_total_whose_remaining_cost_fits():
    assert budget.replan_window(200, 5000) == (50, 200)
    assert budget.replan_window(19, 5000) is None  # too short a warm-up to time steps in
    assert budget.replan_window(200, 200) is None  # the run ends within its warm-up
    # At step 20 (2 whole epochs of 10, two validations made), 2 s a step, a 15 s validation after every epoch,
    # 100 s left: 47 steps (27 more: epochs 3-5, 3 more validations) cost 54 + 45 = 99 s; 48 would cost 101 s.
    assert budget.replanned_steps(100, 20, 2.0, 15.0, 10, 1, True) == 47
    assert budget.replanned_steps(100, 20, 2.0, 0.0, 10, 1, False) == 70
    assert budget.replanned_steps(-5, 20, 2.0, 15.0, 10, 1, True) == 21  # over budget already: one more step
    for remaining in range(5, 400, 7):  # brute force agrees, from a step in the middle of an epoch
        n = budget.replanned_steps(remaining, 13, 1.5, 4.0, 6, 2, True)
        done = (13 // 6) // 2
        cost = lambda k: (k - 13) * 1.5 + (budget.validations(k, 6, 2, True) - done) * 4.0  # noqa: E731
        assert n == 14 or cost(n) <= remaining
        assert cost(n + 1) > remaining


# ------------------------------------------------------------------ budgeted runs


def _cfg(root, out_dir, **overrides):
    # A small U-Net with BatchNorm (running statistics the rehearsal must restore) and dropout (RNG draws).
    raw = tiny_config(root, out_dir, **{"data.crop_size": [64, 96], "data.val_split": "", "model.name": "unet_original",
                                        "model.args": {"base_channels": 8, "batch_norm": True}, **overrides})
    return config_from_dict(raw)


def _fake_clock(monkeypatch, tick: float) -> None:
    counter = itertools.count(0.0, tick)
    monkeypatch.setattr(budget, "_clock", lambda: next(counter))


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["state_dict"]


BUDGET = 0.12  # minutes; with a 0.5 s fake step: floor((0.12 * 60 * 0.97 - 4.5) / 0.5) = 4 steps


def test_a_budget_resolves_the_step_count_from_timed_steps_and_a_rerun_repeats_it(tiny_root, tmp_path, monkeypatch):
    _fake_clock(monkeypatch, 0.5)
    logged = []
    summary = train(_cfg(tiny_root, tmp_path / "budget", **{"train.time_budget_minutes": BUDGET}), log=logged.append)
    plan = summary["budget"]
    assert plan["seconds_per_step"] == 0.5
    # The clock is read at the start, around each of the 1 + 3 rehearsal steps, and at the end.
    assert plan["rehearsal_seconds"] == 0.5 * (2 * (budget.WARMUP_STEPS + budget.TIMED_STEPS) + 1)
    expected = math.floor((BUDGET * 60 * (1 - budget.MARGIN) - plan["rehearsal_seconds"]) / 0.5)
    assert summary["total_steps"] == plan["max_steps"] == expected == 4
    assert any("train.max_steps=4" in line for line in logged)
    saved = yaml.safe_load((tmp_path / "budget" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 4
    state = load_checkpoint(tmp_path / "budget" / "checkpoints" / "last.pt")
    assert state["global_step"] == state["total_steps"] == 4

    # The same run anywhere: the saved config (max_steps wins over the budget) and a plain max_steps.
    rerun = load_config(tmp_path / "budget" / "config.yaml", [f"train.out_dir={tmp_path / 'rerun'}"])
    _fake_clock(monkeypatch, 0.01)  # a much faster machine: ignored, the count is fixed
    assert train(rerun, log=lambda m: None)["budget"] is None
    plain = train(_cfg(tiny_root, tmp_path / "plain", **{"train.max_steps": 4}), log=lambda m: None)
    assert plain["total_steps"] == 4
    reference = _weights(tmp_path / "budget")
    for other in ("rerun", "plain"):
        weights = _weights(tmp_path / other)
        for key, value in reference.items():
            assert torch.equal(value, weights[key]), (other, key)


def test_a_resumed_budgeted_run_keeps_its_step_count(tiny_root, tmp_path, monkeypatch):
    _fake_clock(monkeypatch, 0.5)
    straight = train(_cfg(tiny_root, tmp_path / "straight", **{"train.time_budget_minutes": BUDGET}),
                     log=lambda m: None)
    _fake_clock(monkeypatch, 0.5)
    train(_cfg(tiny_root, tmp_path / "split", **{"train.time_budget_minutes": BUDGET, "train.stop_after": 2}),
          log=lambda m: None)
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["global_step"] == 2
    _fake_clock(monkeypatch, 0.05)  # timed again, this would be ten times as many steps
    logged = []
    resumed = train(_cfg(tiny_root, tmp_path / "split", **{"train.time_budget_minutes": BUDGET}),
                    resume="auto", log=logged.append)
    assert resumed["total_steps"] == straight["total_steps"] == 4 and resumed["budget"] is None
    assert any("keeping it" in line for line in logged)
    reference, weights = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    for key, value in reference.items():
        assert torch.equal(value, weights[key]), key


def test_a_budget_with_validation_counts_the_validation_passes(tiny_root, tmp_path, monkeypatch):
    _fake_clock(monkeypatch, 0.05)  # validation is timed for real: a short fake step gives it a large share
    cfg = _cfg(tiny_root, tmp_path / "val", **{"train.time_budget_minutes": 0.03, "data.val_split": "train"})
    summary = train(cfg, log=lambda m: None)
    plan = summary["budget"]
    assert plan["seconds_per_validation"] > 0
    usable = 0.03 * 60 * (1 - budget.MARGIN) - plan["rehearsal_seconds"]
    assert plan["max_steps"] == summary["total_steps"]
    assert plan["max_steps"] == budget.steps_within(usable, 0.05, plan["seconds_per_validation"], 1, 1, True)
    assert plan["max_steps"] < math.floor(usable / 0.05)  # validation took its share


def test_a_nonpositive_budget_is_refused(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="time_budget_minutes: expected a number > 0, got 0.0"):
        train(_cfg(tiny_root, tmp_path / "bad", **{"train.time_budget_minutes": 0.0}), log=lambda m: None)


def test_a_budget_counts_the_ema_bn_recomputation_in_each_validation(tiny_root, tmp_path, monkeypatch):
    import imseg.engine.run_setup as run_setup

    def slow_recompute(module, loader, *args):
        time.sleep(0.2)  # one batch of the recomputation
        return module

    monkeypatch.setattr(run_setup, "with_recomputed_bn", slow_recompute)
    _fake_clock(monkeypatch, 0.05)
    cfg = _cfg(tiny_root, tmp_path / "val", **{"train.time_budget_minutes": 0.03, "data.val_split": "train",
                                               "train.ema_decay": 0.9, "train.ema_bn_images": 2})
    cfg.data.batch_size = 1  # two images: two batches of the recomputation at 0.2 s each
    plan = train(cfg, log=lambda m: None)["budget"]
    assert plan["seconds_per_validation"] >= 0.4


class _ScriptedClock:
    """0.5 s per read for the first ``rehearsal_reads`` reads, then the given readings: the run's own steps
    timed at another speed than the rehearsal's."""

    def __init__(self, rehearsal_reads: int, later: list[float]):
        self.readings = [0.5 * k for k in range(rehearsal_reads)] + later
        self.reads = 0

    def __call__(self) -> float:
        value = self.readings[min(self.reads, len(self.readings) - 1)]
        self.reads += 1
        return value


def test_a_budget_is_planned_again_at_the_warmup_end_and_a_rerun_with_the_new_count_repeats_it(
        tiny_root, tmp_path, monkeypatch):
    # The budget's start and the rehearsal read the clock 1 + 10 times (0 to 5 s: 0.5 s a step, as in the tests
    # above): 0.3 minutes plan floor((0.3 * 60 * 0.97 - 4.5) / 0.5) = 25 steps. The warm-up's 20 steps time
    # steps 5 to 20 at 6 s and 12 s: 0.4 s a step, 12 s spent, so 17.46 - 12 = 5.46 s left hold 13 more.
    clock = _ScriptedClock(11, [6.0, 12.0])
    monkeypatch.setattr(budget, "_clock", clock)
    logged = []
    cfg = _cfg(tiny_root, tmp_path / "budget", **{"train.time_budget_minutes": 0.3, "optim.warmup_iters": 20})
    summary = train(cfg, log=logged.append)
    plan = summary["budget"]
    assert clock.reads == 13
    assert plan["rehearsed_max_steps"] == 25 and plan["replanned_at_step"] == 20
    assert plan["replanned_seconds_per_step"] == pytest.approx(0.4) and plan["replanned_elapsed_seconds"] == 12.0
    assert summary["total_steps"] == plan["max_steps"] == 20 + 13
    assert any("planned again at step 20" in line and "train.max_steps=33" in line for line in logged)
    assert yaml.safe_load((tmp_path / "budget" / "config.yaml").read_text())["train"]["max_steps"] == 33
    state = load_checkpoint(tmp_path / "budget" / "checkpoints" / "last.pt")
    assert state["global_step"] == state["total_steps"] == 33
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(cfg.optim.min_lr, abs=1e-12)  # decayed

    # Until step 20 the learning rate does not depend on the count: the run is exactly max_steps=33's.
    plain = train(_cfg(tiny_root, tmp_path / "plain", **{"train.max_steps": 33, "optim.warmup_iters": 20}),
                  log=lambda m: None)
    assert plain["budget"] is None
    reference, weights = _weights(tmp_path / "budget"), _weights(tmp_path / "plain")
    for key, value in reference.items():
        assert torch.equal(value, weights[key]), key


def test_a_short_warmup_keeps_the_rehearsals_count(tiny_root, tmp_path, monkeypatch):
    _fake_clock(monkeypatch, 0.5)
    cfg = _cfg(tiny_root, tmp_path / "short", **{"train.time_budget_minutes": BUDGET, "optim.warmup_iters": 2})
    plan = train(cfg, log=lambda m: None)["budget"]
    assert plan["max_steps"] == 4 and plan["replanned_at_step"] is None and plan["rehearsed_max_steps"] is None
