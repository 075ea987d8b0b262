"""Datasets, joint transforms, class statistics and palettes.

``dataset[i]`` returns ``(image uint8 [3, H, W], mask int64 [H, W])``: the
image is not normalised (the engine normalises batches with the model's
preprocessing) and mask values are class ids or ``ignore_index``.
"""
from .base import DataError, SegmentationDataset
from .build import DATASETS, build_dataset
from .camvid import CAMVID_CLASSES, CAMVID_PALETTE, SEGNET_CLASS_WEIGHTS, CamVid, find_camvid_root
from .folder import FolderDataset
from .palette import colorize, default_palette, overlay, rgb_to_index
from .stats import enet_weights, median_frequency_weights
from .transforms import JointTransform, build_transform

__all__ = [
    "CAMVID_CLASSES",
    "CAMVID_PALETTE",
    "DATASETS",
    "SEGNET_CLASS_WEIGHTS",
    "CamVid",
    "DataError",
    "FolderDataset",
    "JointTransform",
    "SegmentationDataset",
    "build_dataset",
    "build_transform",
    "colorize",
    "default_palette",
    "find_camvid_root",
    "enet_weights",
    "median_frequency_weights",
    "overlay",
    "rgb_to_index",
]
