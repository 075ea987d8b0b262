"""Any timm model as an encoder (``"timm:<name>"``), through timm's ``features_only`` extractors."""
from __future__ import annotations

import os
from typing import Sequence

import torch

from imseg.models.encoder_base import Encoder
from imseg.models.weights import adapt_first_conv, load_checked, read_state_dict, timm_download_advice, timm_pretrained
from imseg.preprocessing import TORCHVISION, Preprocessing


class TimmEncoder(Encoder):
    """Any timm model with ``features_only=True``; preprocessing comes from its ``pretrained_cfg``.

    ``weights="imagenet"`` downloads timm's default pretrained weights. A
    file must be in timm's format (what ``timm.create_model(name).state_dict()``
    saves, as in timm's Hugging Face repos); it is loaded strictly by
    `load_file`, since timm's own loader only logs mismatches when building
    a feature extractor. ``taps`` are timm's ``out_indices``.
    """

    def __init__(
        self,
        model_name: str,
        in_channels: int = 3,
        output_stride: int = 32,
        weights: str | os.PathLike | None = None,
        taps: Sequence[int] | None = None,
    ) -> None:
        import timm

        if not timm.is_model(model_name):
            raise ValueError(
                f"unknown timm model {model_name!r}; list candidates with timm.list_models('*{model_name[:8]}*')"
            )
        kwargs: dict = {"features_only": True, "in_chans": in_channels}
        if output_stride != 32:  # models without dilation support reject the argument altogether
            kwargs["output_stride"] = output_stride
        if taps is not None:
            kwargs["out_indices"] = tuple(taps)
        if str(weights) == "imagenet":
            model = timm_pretrained(model_name, timm_download_advice(model_name), **kwargs)
        else:
            model = timm.create_model(model_name, pretrained=False, **kwargs)
        info, cfg = model.feature_info, model.pretrained_cfg
        mean, std = cfg.get("mean", TORCHVISION.mean), cfg.get("std", TORCHVISION.std)
        super().__init__(
            name=f"timm:{model_name}",
            in_channels=in_channels,
            channels=list(info.channels()),
            # timm already reports the reduction of dilated stages as capped; min() is a safeguard.
            strides=[min(int(r), output_stride) for r in info.reduction()],
            output_stride=output_stride,
            preprocessing=Preprocessing(tuple(mean), tuple(std), "RGB", 1 / 255).for_channels(in_channels),
        )
        self.model = model
        self.model_name = model_name
        self.taps = tuple(info.out_indices)
        if weights is not None and str(weights) != "imagenet":
            self.load_file(weights)

    def load_file(self, path: str | os.PathLike) -> None:
        """Load a timm-format state dict into the feature extractor, strictly.

        Feature extractors rename top-level sequential children (``stem.0`` ->
        ``stem_0``) and drop the classification head, so file keys are matched
        after mapping "." to "_", and keys of the full model that the feature
        extractor does not use (head, final conv) are ignored. Anything else
        that does not match is an error.
        """
        import timm

        def norm(key: str) -> str:
            return key.replace(".", "_")

        state = read_state_dict(path)
        own_by_norm = {norm(k): k for k in self.model.state_dict()}
        # Keys of the full classification model that the feature extractor leaves out.
        full_keys = {norm(k) for k in timm.create_model(self.model_name, pretrained=False).state_dict()}
        dropped = full_keys - set(own_by_norm)
        mapped: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if norm(key) in own_by_norm:
                mapped[own_by_norm[norm(key)]] = value
            elif norm(key) not in dropped:
                mapped[key] = value  # reported as unexpected by load_checked

        first_convs = self.model.pretrained_cfg.get("first_conv") or ()
        for conv in (first_convs,) if isinstance(first_convs, str) else first_convs:
            key = own_by_norm.get(norm(f"{conv}.weight"))
            if key is not None:
                adapt_first_conv(mapped, key, self.in_channels)

        load_checked(self.model, mapped, str(path), f"encoder {self.name!r} (in_channels={self.in_channels})")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))
