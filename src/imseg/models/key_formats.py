"""Key layouts of weight files, and the converters that bring each one to the names our encoders use.

A registered weights file (weight_registry.py) names its layout by the key
of `KEY_FORMATS`; an unregistered file is converted by the first format
that recognises its keys, and loads unchanged when none does (a file in
our own layout, torchvision's or timm's). A converter only renames keys:
tensor count and shapes never change, so a wrong mapping shows up as
missing / unexpected keys in `weights.load_checked`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class KeyFormat:
    """A weight-file layout: how to recognise its keys and how to rename them to ours."""

    name: str
    description: str
    recognises: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[State], State]


# --------------------------------------------------------------------------- EfficientNet-Lite, reference package

# The efficientnet-lite-pytorch package (lukemelas's EfficientNet-PyTorch
# layout) numbers its MBConv blocks flat, ``_blocks.0`` .. ``_blocks.N``;
# timm groups them by stage, ``blocks.<stage>.<index>``, and names the
# convs and norms by their role. Outside the blocks:
_TOP_LEVEL = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.", "_bn1.": "bn2.",
              "_fc.": "classifier."}
# Inside a block the names depend on its kind. The first stage's blocks have
# no expansion (expand ratio 1): timm's DepthwiseSeparableConv, dw -> pw.
_SEPARABLE = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."}
# Every later block is an inverted residual: expand (pw) -> dw -> project (pwl).
_INVERTED = {"_expand_conv.": "conv_pw.", "_bn0.": "bn1.", "_depthwise_conv.": "conv_dw.", "_bn1.": "bn2.",
             "_project_conv.": "conv_pwl.", "_bn2.": "bn3."}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(.+)$")


def _renamed(key: str, table: Mapping[str, str], where: str) -> str:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old):]
    raise ValueError(f"{where}: key {key!r} is not part of the EfficientNet-Lite layout (expected one of {list(table)})")


def block_stages(state: Mapping[str, torch.Tensor]) -> list[tuple[int, int]]:
    """(stage, index in stage) of each flat ``_blocks.N``.

    EfficientNet's stages are runs of blocks with one output width (Lite0:
    16, 24, 40, 80, 112, 192, 320 channels), and every stage has a width of
    its own, so a stage starts where a block's projection changes width.
    Reading it from the file keeps one converter for every Lite variant
    (their depths differ: 1-2-2-3-3-4-1 for Lite0, 1-3-3-4-4-5-1 for Lite1/2).
    """
    count = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)))
    widths = [state[f"_blocks.{i}._project_conv.weight"].shape[0] for i in range(count)]
    places, stage, index = [], 0, 0
    for i in range(count):
        if i > 0 and widths[i] != widths[i - 1]:
            stage, index = stage + 1, 0
        places.append((stage, index))
        index += 1
    return places


def efficientnet_lite_to_timm(state: State) -> State:
    """Rename an efficientnet-lite-pytorch state dict to timm's ``tf_efficientnet_lite*`` names."""
    places = block_stages(state)
    out: State = {}
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if match is None:
            out[_renamed(key, _TOP_LEVEL, "EfficientNet-Lite file")] = value
            continue
        i, rest = int(match.group(1)), match.group(2)
        table = _INVERTED if f"_blocks.{i}._expand_conv.weight" in state else _SEPARABLE
        stage, index = places[i]
        out[f"blocks.{stage}.{index}.{_renamed(rest, table, f'EfficientNet-Lite block {i}')}"] = value
    return out


def _is_efficientnet_lite(state: Mapping[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state and "_blocks.0._project_conv.weight" in state


KEY_FORMATS: dict[str, KeyFormat] = {
    "identity": KeyFormat("identity", "our own names (torchvision's, timm's)", lambda state: False, dict),
    "efficientnet_lite_pytorch": KeyFormat(
        "efficientnet_lite_pytorch",
        "efficientnet-lite-pytorch (_conv_stem, _blocks.N...), renamed to timm's tf_efficientnet_lite names",
        _is_efficientnet_lite,
        efficientnet_lite_to_timm,
    ),
}


def convert_keys(state: State, format_name: str | None) -> tuple[State, str]:
    """``state`` in our names, and the name of the format it was in.

    ``format_name`` None (a file the registry does not know): the first
    format that recognises the keys, else ``"identity"``.
    """
    if format_name is None:
        format_name = next((f.name for f in KEY_FORMATS.values() if f.recognises(state)), "identity")
    if format_name not in KEY_FORMATS:
        raise ValueError(f"unknown weights key format {format_name!r}; known: {', '.join(KEY_FORMATS)}")
    return KEY_FORMATS[format_name].convert(state), format_name
