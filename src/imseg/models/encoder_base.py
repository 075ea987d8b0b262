"""The encoder contract: what every backbone promises the decoders.

An `Encoder` is a module whose ``forward(x)`` gives a list of feature maps;
their ``channels`` and ``strides``, the ``output_stride`` and the
``preprocessing`` its weights expect are arguments of `Encoder.__init__`,
checked there, so an encoder that forgets one fails when it is built, not
when a decoder first reads it. Decoders read those lists and never look at
the encoder's name.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn

from imseg.models.weight_registry import imagenet_entry, read_weights
from imseg.models.weights import adapt_first_conv, load_checked
from imseg.preprocessing import Preprocessing


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def contract_problem(
    name: object,
    in_channels: object,
    channels: Sequence[object],
    strides: Sequence[object],
    output_stride: object,
    preprocessing: object,
) -> str | None:
    """What is wrong with an encoder's contract, in words, or None when nothing is."""
    if not isinstance(name, str) or not name:
        return f"name must be a non-empty string, got {name!r}"
    if not _positive_int(in_channels):
        return f"in_channels must be a positive integer, got {in_channels!r}"
    if not _positive_int(output_stride):
        return f"output_stride must be a positive integer, got {output_stride!r}"
    if not channels or not all(_positive_int(c) for c in channels):
        return f"channels must be a non-empty list of positive integers, got {channels!r}"
    if len(strides) != len(channels) or not all(_positive_int(s) for s in strides):
        return f"strides must hold one positive integer per feature map ({len(channels)}), got {strides!r}"
    if list(strides) != sorted(strides) or max(strides) > output_stride:
        return (f"strides must never fall from one map to the next, nor pass output_stride {output_stride}; "
                f"got {strides!r}")
    if not isinstance(preprocessing, Preprocessing) or preprocessing.num_channels != in_channels:
        return f"preprocessing must be a Preprocessing for {in_channels} channels, got {preprocessing!r}"
    return None


def check_taps(taps: Sequence[int], count: int, name: str) -> tuple[int, ...]:
    """``taps`` as a tuple, after checking they are increasing indices below ``count``."""
    taps = tuple(taps)
    valid = all(isinstance(t, int) and not isinstance(t, bool) for t in taps)
    if not taps or not valid or list(taps) != sorted(set(taps)) or taps[0] < 0 or taps[-1] >= count:
        raise ValueError(f"taps of encoder {name!r} must be increasing indices from 0 to {count - 1}, got {taps!r}")
    return taps


class Encoder(nn.Module):
    """Base class: a feature extractor with known channels and strides.

    Attributes:
        name: the name it was built from (``"resnet50"``, ``"timm:convnext_tiny"``).
        channels: channels of each returned feature map.
        strides: stride of each returned feature map w.r.t. the input,
            capped at ``output_stride`` (dilated stages keep their stride).
        output_stride: stride of the encoder's deepest layer (8, 16 or 32).
        in_channels: number of input channels.
        preprocessing: how 0-255 images must be normalised for these weights.
        classifier_state: tensors of the ImageNet classifier found in the
            weights file, kept only when asked (``keep_classifier=True``) so a
            decoder can reuse them (FCN turns VGG's fc6/fc7 into convs).
    """

    # Weight loading (see load_weights): the first conv's state-dict prefix, adapted
    # when in_channels != 3, and the key prefixes of the ImageNet classification head.
    first_conv: str = "conv1"
    classifier_prefixes: tuple[str, ...] = ("fc.", "classifier.", "head.")

    def __init__(
        self,
        *,
        name: str,
        in_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        output_stride: int,
        preprocessing: Preprocessing,
    ) -> None:
        super().__init__()
        problem = contract_problem(name, in_channels, channels, strides, output_stride, preprocessing)
        if problem is not None:
            raise ValueError(f"{type(self).__name__} breaks the encoder contract: {problem}")
        self.name = name
        self.in_channels = in_channels
        self.channels = list(channels)
        self.strides = list(strides)
        self.output_stride = output_stride
        self.preprocessing = preprocessing
        self.classifier_state: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def imagenet_state(self) -> tuple[str, dict[str, torch.Tensor]]:
        """(where from, state dict) of this encoder's ImageNet weights.

        By default the file weight_registry.py registers for the encoder,
        downloaded into the torch.hub cache and hash-checked; encoders whose
        weights come another way (torch.hub, timm) override it.
        """
        if imagenet_entry(self.name) is None:
            raise ValueError(
                f"there are no ImageNet weights to download for encoder {self.name!r}; "
                "pass the path of a weights file instead"
            )
        return read_weights(self.name, "imagenet")

    def normalise_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook for weight files in an older key layout; the identity by default."""
        return state

    def load_weights(self, weights: str | os.PathLike, keep_classifier: bool = False) -> None:
        """Load ``"imagenet"``, a registered package source or a weights file, strictly, without the classifier head.

        Files go through weight_registry.py: registered ones are hash-checked
        and their keys converted to ours. A 3-channel first conv is adapted
        to ``in_channels``; with ``keep_classifier`` the head's tensors stay
        on ``classifier_state`` (FCN turns VGG's fc6/fc7 into convolutions).
        """
        if str(weights) == "imagenet":
            source, state = self.imagenet_state()
        else:
            source, state = read_weights(self.name, weights)
        state = self.normalise_state(state)
        classifier = {k: v for k, v in state.items() if k.startswith(self.classifier_prefixes)}
        state = {k: v for k, v in state.items() if k not in classifier}
        adapt_first_conv(state, f"{self.first_conv}.weight", self.in_channels)
        load_checked(self, state, source, f"encoder {self.name!r} (in_channels={self.in_channels})")
        if keep_classifier:
            self.classifier_state = classifier

    def feature_index(self, stride: int) -> int:
        """Index of the deepest feature map at ``stride`` (decoders pick their inputs with this)."""
        matches = [i for i, s in enumerate(self.strides) if s == stride]
        if not matches:
            raise ValueError(
                f"encoder {self.name!r} at output stride {self.output_stride} has no feature map at stride {stride} "
                f"(its strides are {self.strides})"
            )
        return matches[-1]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, strides={self.strides}"
