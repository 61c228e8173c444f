"""ruc core: a pure PyTorch library for RUC refinement of image clusterings.

Sub-packages by concern: ``datasets``, ``models``, ``augment``, ``clustering``,
``sampling``, ``ruc``, ``metrics``, ``adversarial``; ``pipeline.run_job`` runs a
whole job from a ``spec.JobSpec``. ``core.spec`` and ``core.errors`` import no
torch, so the API can validate specs without it; this file imports nothing.
"""
