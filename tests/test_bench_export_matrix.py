"""benchmarks/export_matrix.py: models are conditioned so parity means something; the docs table."""
from __future__ import annotations

import torch
from torch import nn

from tests.helpers import load_benchmark


def test_conditioning_gives_zero_initialised_layers_weights_and_measures_batchnorm_statistics():
    matrix = load_benchmark("export_matrix")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    nn.init.zeros_(model[3].weight)
    nn.init.zeros_(model[3].bias)
    x = torch.randn(1, 3, 16, 16)
    assert not model.eval()(x).any()  # what FCN's zero score layers give: a vacuous parity check
    model = matrix.conditioned(model, (16, 16))
    assert not model.training
    assert model(x).abs().max() > 1e-3
    assert not torch.allclose(model[1].running_var, torch.ones(8))


def test_markdown_names_each_outcome():
    matrix = load_benchmark("export_matrix")
    results = {
        "a": {"onnx": {"ok": True, "relative_difference": 2e-6},
              "openvino": {"ok": False, "error": "ValueError: OpenVINO cannot run",
                           "fixed_size": {"ok": True, "relative_difference": 3e-6}},
              "executorch": {"ok": True, "relative_difference": 1e-6, "ops_outside_xnnpack": {"aten.cat.default": 2}}},
        "b": {"onnx": {"ok": False, "relative_difference": 0.03}},
        "c": {"build_error": "TypeError: no"},
        # above the bound, but no further from eager than eager float32 is from float64: rounding, not a bug
        "d": {"eager_float32_error": 4e-4, "onnx": {"ok": False, "relative_difference": 7e-4},
              "openvino": {"ok": False, "relative_difference": 9e-4}},
        # a network that jumps (eager moves 200x its rounding under 1e-6 input noise: SegNet's switches)
        "e": {"eager_float32_error": 2e-5, "eager_input_sensitivity": 4.6e-3,
              "executorch": {"ok": False, "relative_difference": 4.5e-3}},
        # a smooth one moving a few times its rounding is held to the rounding bound (DeconvNet)
        "f": {"eager_float32_error": 3.5e-5, "eager_input_sensitivity": 1.3e-4,
              "executorch": {"ok": False, "relative_difference": 1.01e-4}},
    }
    table = matrix.markdown(results).splitlines()
    assert table[2] == ("| a | ok (2e-06) | fixed size only (3e-06); dynamic size: ValueError: OpenVINO cannot run | "
                        "ok (1e-06); outside XNNPACK: cat |")
    assert table[3] == "| b | **fails**: relative difference 3.0e-02 | not run | not run |"
    assert table[4].startswith("| c | build failed: TypeError: no")
    assert table[5] == ("| d | ok at float32 rounding (7e-04; eager float32 itself 4e-04 from float64) | "
                        "**fails**: relative difference 9.0e-04 (2.2x eager's own float32 error) | not run |")
    assert table[6] == ("| e | not run | not run | ok at the model's input sensitivity (4e-03; eager itself moves "
                        "5e-03 when the input moves 1e-6) |")
    assert table[7] == ("| f | not run | not run | **fails**: relative difference 1.0e-04 "
                        "(2.9x eager's own float32 error) |")


def test_input_sensitivity_sees_a_switch_flip_that_float_rounding_does_not():
    """A 2x2 window whose two maxima differ by 1e-9: any input noise decides the tie, moving the unpooled value."""
    matrix = load_benchmark("export_matrix")
    from imseg.models.segnet import max_pool_with_switches, max_unpool_with_switches

    class PoolUnpool(nn.Module):
        def forward(self, x):
            y, s = max_pool_with_switches(x)
            return max_unpool_with_switches(y, s) + 0.5 * x

    x = torch.zeros(1, 3, 4, 4)
    x[0, :, 0, 0], x[0, :, 0, 1] = 1.0, 1.0 - 1e-9  # a tie within float32
    model = PoolUnpool().eval()
    assert matrix.eager_float32_error(model, x) < 1e-6
    sensitivity = matrix.eager_input_sensitivity(model, x)
    assert sensitivity > 0.5  # the value jumped a pixel in some draw
    assert matrix.within_sensitivity(0.6, sensitivity, 1e-7)
    assert not matrix.within_sensitivity(0.6, 1e-5, 1e-7)
