"""Datasets the project generates itself: the offline reference task."""

from .reference import SHAPES, ReferenceOptions, make_reference_dataset

__all__ = ["SHAPES", "ReferenceOptions", "make_reference_dataset"]
