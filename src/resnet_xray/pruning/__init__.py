"""Iterative structured channel pruning: importance -> prune -> fine-tune -> repeat, with channels really removed.

Torch-Pruning's DepGraph keeps residual-coupled channels together; a pruned model is
saved as a width spec plus a state_dict, so ``load_model`` rebuilds it anywhere.
"""

from .analyze import AnalyzeOptions, GroupImportance, analyze_importance
from .importance import CRITERIA
from .loop import PruneOptions, PruneResult, Trainer, prune
from .spec import apply_pruned_spec, pruned_spec, stage_channels
from .structured import count_macs, prune_to_macs

__all__ = [
    "CRITERIA",
    "AnalyzeOptions",
    "GroupImportance",
    "PruneOptions",
    "PruneResult",
    "Trainer",
    "analyze_importance",
    "apply_pruned_spec",
    "count_macs",
    "prune",
    "prune_to_macs",
    "pruned_spec",
    "stage_channels",
]
