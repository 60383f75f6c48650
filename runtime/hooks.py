"""Callbacks that long loops call at fixed points, installed from outside the loop: a loop knows
nothing of who listens. An environment variable names them as `module:function`, comma-separated:
`FLMPLAN_STEP_HOOKS` for a training run (called as `hook(run, stage_index, steps_done)` on every
rank after each step) and `FLMPLAN_PREPARE_HOOKS` for `flmplan data prepare` (called as
`hook(batches_recorded)` each time its progress is recorded). The tests install ones that kill the
process there, as a crashed node or a killed job would (tests/hooks.py)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from planner.errors import FlmplanError

STEP_HOOKS = "FLMPLAN_STEP_HOOKS"
PREPARE_HOOKS = "FLMPLAN_PREPARE_HOOKS"


def installed(variable: str) -> list[Callable]:
    """The hooks `variable` names, imported once when the loop starts."""
    hooks = []
    for name in filter(None, (n.strip() for n in os.environ.get(variable, "").split(","))):
        module, _, function = name.partition(":")
        try:
            hooks.append(getattr(importlib.import_module(module), function))
        except (ImportError, AttributeError, ValueError):
            raise FlmplanError(f"{variable} names {name!r}, which is not an importable module:function.") from None
    return hooks
