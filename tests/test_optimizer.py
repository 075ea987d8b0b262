"""The optimisers imseg builds: torch's fused kernels where the parameters' device has them."""
from __future__ import annotations

import pytest
import torch

from imseg.config import OptimConfig
from imseg.engine import schedule
from imseg.engine.schedule import build_optimizer
from imseg.models import create_model


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_cpu_parameters_get_the_fused_step_and_the_same_weights(name, monkeypatch):
    """Fused on the CPU, and after three steps the same weights as torch's default path (to float32 rounding)."""
    torch.manual_seed(0)
    model = create_model("lraspp", 3, encoder="mobilenet_v3_small")
    twin = create_model("lraspp", 3, encoder="mobilenet_v3_small")
    twin.load_state_dict(model.state_dict())
    cfg = OptimConfig(name=name, lr=0.01, weight_decay=0.01)
    fused = build_optimizer(model, cfg)
    monkeypatch.setattr(schedule, "_can_fuse", lambda model: False)
    default = build_optimizer(twin, cfg)
    assert fused.defaults["fused"] is True and not default.defaults["fused"]
    for _ in range(3):
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        default.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_parameters_on_a_device_without_the_kernel_get_torchs_default_step():
    with torch.device("meta"):
        model = create_model("lraspp", 3, encoder="mobilenet_v3_small")
    assert build_optimizer(model, OptimConfig(name="adamw")).defaults["fused"] is False
