"""Adversarial evaluation in [0, 1] pixel space: FGSM, BIM and a robustness report."""

from core.adversarial.attacks import bim, fgsm
from core.adversarial.report import robustness_report

__all__ = ["bim", "fgsm", "robustness_report"]
