"""Knowledge distillation of a GPT-2 student from a GPT-2 teacher (single process or torchrun DDP).

    from compress import distill, DistillConfig
    student = distill(student, teacher, train_ids, DistillConfig(tokens=2_000_000, temperature=2.0))
"""

from compress.distillation.config import DistillConfig, LossWeights, StudentInit
from compress.distillation.loop import DistillResult, distill, run_distillation
from compress.distillation.student import student_from_teacher

__all__ = ["DistillConfig", "DistillResult", "LossWeights", "StudentInit", "distill", "run_distillation",
           "student_from_teacher"]
