"""Deferral policies and the uncertainty features they read.

Nothing here imports ``cascade`` or ``app``: a policy sees ``Features``, never a level.
"""

from policies.base import (
    Decision,
    Features,
    Policy,
    PolicyError,
    known_policies,
    make_policy,
    register,
)
from policies.threshold import ThresholdPolicy

__all__ = [
    "Decision",
    "Features",
    "Policy",
    "PolicyError",
    "ThresholdPolicy",
    "known_policies",
    "make_policy",
    "register",
]
