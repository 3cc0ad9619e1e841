"""Knowledge distillation of a GPT-2 student from a GPT-2 teacher (single process or torchrun DDP).

    from compress import distill, DistillConfig
    student = distill(student, teacher, train_ids, DistillConfig(tokens=2_000_000, temperature=2.0))
"""

from importlib import import_module

# name -> the module that defines it, imported on first use: the plan's config classes and the step
# modules import this package without importing torch (plan errors answer fast: tests/test_cold_start.py).
_LAZY = {"DistillConfig": "compress.distillation.config", "DistillResult": "compress.distillation.loop",
         "LossWeights": "compress.distillation.config", "StudentInit": "compress.distillation.config",
         "distill": "compress.distillation.loop", "run_distillation": "compress.distillation.loop",
         "student_from_teacher": "compress.distillation.student"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
