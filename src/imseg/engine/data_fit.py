"""The model fitted to the data it trains on: input bands and the normalisation of deep imagery.

Two things a user should not have to say when the data already does:

* ``model.args.in_channels``: taken from the images (a 4-band scene gets a
  4-channel first layer) when the config does not set it;
* the preprocessing of data that is not 8-bit: the /255 conventions of
  torchvision and caffe weights are wrong for 16-bit or float imagery, so
  such data is normalised by the per-band mean and std of the training
  images (``model.preprocessing: data`` asks for that explicitly, for any
  data). The result is stored in the checkpoint like every preprocessing.
"""
from __future__ import annotations

from typing import Any, Callable

from imseg.preprocessing import Preprocessing, get_preprocessing


def model_args_for(cfg_args: dict[str, Any], train_ds, log: Callable[[str], None]) -> dict[str, Any]:
    """``model.args`` with ``in_channels`` from the data when the config leaves it out and it is not 3."""
    args = dict(cfg_args)
    if "in_channels" not in args:
        bands = int(train_ds.num_channels)
        if bands != 3:
            args["in_channels"] = bands
            log(f"model.args.in_channels: {bands}, from the training images ({bands} bands)")
    return args


def preprocessing_for(spec: Any, model_preprocessing: Preprocessing, in_channels: int, train_ds,
                      log: Callable[[str], None]) -> Preprocessing:
    """The preprocessing to train with: the config's, the data's (``"data"``, or data that is not 8-bit),
    or else the encoder's own."""
    deep = getattr(train_ds, "image_dtype", "uint8") != "uint8"
    if spec == "data" or (spec is None and deep):
        pre = train_ds.band_preprocessing()
        why = "model.preprocessing: data" if spec == "data" else f"the images are {train_ds.image_dtype}, not 8-bit"
        log(f"preprocessing from the training images' band statistics ({why}): mean "
            f"{[round(m, 2) for m in pre.mean]}, std {[round(s, 2) for s in pre.std]}")
        return pre
    if spec is not None:
        return get_preprocessing(spec).for_channels(in_channels)
    return model_preprocessing
