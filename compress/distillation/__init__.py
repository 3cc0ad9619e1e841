"""Knowledge distillation of a GPT-2 student from a GPT-2 teacher (single process or torchrun DDP).

    from compress import distill, DistillConfig
    student = distill(student, teacher, train_ids, DistillConfig(tokens=2_000_000, temperature=2.0))
"""

from compress.lazy import lazy_exports

# name -> the module that defines it, imported on first use: the plan's config classes and the step
# modules import this package without importing torch (plan errors answer fast: tests/test_cold_start.py).
_LAZY = {"DistillConfig": "compress.distillation.config", "DistillResult": "compress.distillation.loop",
         "LossWeights": "compress.distillation.config", "StudentInit": "compress.distillation.config",
         "distill": "compress.distillation.loop", "run_distillation": "compress.distillation.loop",
         "student_from_teacher": "compress.distillation.student"}
__getattr__, __all__ = lazy_exports(__name__, _LAZY)
