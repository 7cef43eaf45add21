"""Follow an image through the network: every operation's output, residual block numbers, gradient flow."""

from __future__ import annotations

from .capture import BlockStats, LayerStats, Trace, TraceOptions, layer_names, tensor_stats, trace_image, trace_model
from .walkthrough import Step, Walkthrough, walkthrough

__all__ = [
    "BlockStats",
    "LayerStats",
    "Step",
    "Trace",
    "TraceOptions",
    "Walkthrough",
    "layer_names",
    "tensor_stats",
    "trace_image",
    "trace_model",
    "walkthrough",
]
