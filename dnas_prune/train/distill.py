"""Knowledge distillation: a pruned student learns from the dense parent's softened outputs as well as the labels.

Pruning keeps the parent around for free, and its soft targets carry more per image than a one-hot label, which
is what a short finetune needs (Hinton et al. 2015).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, task_loss: Tensor, weight: float,
                      temperature: float) -> Tensor:
    """``(1 - weight) * task_loss + weight * T^2 * KL(teacher_T || student_T)``, batch mean.

    The ``T^2`` factor keeps the gradient scale of the soft term independent of the temperature.
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return (1.0 - weight) * task_loss + weight * temperature ** 2 * kl
