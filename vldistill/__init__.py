"""vldistill: distill CLIP teachers into small OOD-robust students, swept on Ray.

Subpackages: ``trainers`` (the science, never imports ray), ``search_spaces``,
``platform`` (everything Ray), ``conf`` (Hydra config groups).
"""

__version__ = "0.1.0"
