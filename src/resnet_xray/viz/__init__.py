"""Matplotlib figures: feature-map grids, kernels, CAM overlays, stage sheets and charts."""
