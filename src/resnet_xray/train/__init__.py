"""Training: fine-tuning, multi-task heads, mixed precision, resumable checkpoints and torchrun/DDP.

The whole job is ``resnet_xray.train.job.finetune``; the loop alone is :func:`fit`.
"""

from .data import DataBundle, make_loaders
from .evaluation import evaluate
from .finetune import fit
from .recipe import FinetuneOptions
from .heads import MultiTaskResNet, attach_heads

__all__ = ["DataBundle", "FinetuneOptions", "MultiTaskResNet", "attach_heads", "evaluate", "fit", "make_loaders"]
