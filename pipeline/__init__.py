"""Stroke-lesion segmentation pipeline on MONAI."""
__version__ = "0.1.0"
