"""Knowledge distillation: an unpruned teacher's softened logits guide a pruned student's recovery.

Hinton et al. (2015): the student matches the teacher's class distribution at temperature
``T`` as well as the labels. A pruned model that learns from the model it was cut from
keeps the teacher's dark knowledge (which wrong classes are nearly right), so it recovers
more of its accuracy in the same fine-tuning epochs than it does from labels alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Distillation:
    """A teacher and how much its outputs count; :func:`resnet_xray.train.finetune.fit` takes one."""

    teacher: nn.Module
    temperature: float = 4.0
    # share of the loss that is the KL term; the rest is cross-entropy on the labels
    weight: float = 0.7

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight must lie in [0, 1], got {self.weight}")
        self.teacher.eval().requires_grad_(False)

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``x`` (float32, no gradient)."""
        return self.teacher(x).float()

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """KL(teacher || student) on softened distributions, scaled by T² so its gradients keep their size as T changes."""
        return distill_loss(student_logits, teacher_logits, self.temperature)

    def to_dict(self) -> dict[str, float]:
        return {"temperature": self.temperature, "weight": self.weight}


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    t = temperature
    return F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
