"""FLM-101B's own recipe (arXiv 2309.03852) as the planner uses it: its stages, its final shape and the
software its published cases state. The growth search compares against it and the growth evidence
builds FLM-like shapes from it."""

from __future__ import annotations

from planner.layout.case import published_cases
from planner.model.specs import ModelSpec, Software

FLM_SCHEDULE = {
    # FLM-101B (arXiv 2309.03852): stage shapes as assumed in the calibration cases (16B and 51B
    # are not published), tokens, batch and tp/pp per stage; 192 GPUs.
    "shapes": [(40, 5632), (40, 10240), (80, 10240)],
    "tokens": [245.37e9, 39.64e9, 26.54e9],
    "global_batch": [2304, 2304, 2160],
    "tp_pp": [(2, 1), (4, 2), (4, 4)],
    "gpus": 192,
    # Peak learning rate per stage (FLM-101B §2.3 / Table 1).
    "lr": [4e-4, 3.4e-4, 2e-4],
}


def flm_base() -> ModelSpec:
    """FLM-101B's final shape (arXiv 2309.03852): 80 × 10240, 80 heads, FFN 4h, padded vocabulary,
    seq 2048, rotary with xPos."""
    return ModelSpec(layers=80, hidden=10240, heads=80, ffn=40960, vocab=100352, seq=2048, position="xpos")


def flm_software(costliest: bool = False) -> Software:
    """The software FLM-101B ran, as its published cases state it (planner/data/cases.json); with
    `costliest`, the facts its sources leave open at their costliest."""
    case = next(c for c in published_cases() if c.name == "flm101b-stage-101B")
    return case.software_spec(costliest)
