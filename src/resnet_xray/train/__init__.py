"""Training: fine-tuning, multi-task heads, mixed precision, resumable checkpoints and torchrun/DDP."""

from .data import DataBundle, make_loaders
from .finetune import FinetuneOptions, evaluate, finetune, fit, replace_classifier
from .heads import MultiTaskResNet, attach_heads

__all__ = ["DataBundle", "FinetuneOptions", "MultiTaskResNet", "attach_heads", "evaluate", "finetune", "fit", "make_loaders", "replace_classifier"]
