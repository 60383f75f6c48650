"""The learning rate of a stage's step: the plan's schedule (planner/plan/plan_file.py: warm-up, re-warmed
after a growth, then cosine decay to MIN_LR_FRACTION of the peak), as Megatron-LM's `cosine` decay."""

from __future__ import annotations

import math

from planner.plan.plan_file import MIN_LR_FRACTION


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up (re-warm after a growth), then cosine decay to 10 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
