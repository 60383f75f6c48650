"""What a production run's stack did where its source is silent: the defaults of its era.

A benchmark table reports the best layout its authors found, so the search fills its open fields with
the fastest choice. A production run ran what its stack did by default on the day it trained, so a
production case that names its date (`era`, YYYY-MM) and stack takes, for each fact its source leaves
open, the default of that stack on that date, stated in the case's comparison, never the fastest.
Each default below changes on a dated release, cited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Stack = Literal["megatron", "deepspeed", "fsdp", "other"]


@dataclass(frozen=True)
class EraFact:
    """One fact that changed on a date: `before` for runs that trained earlier, `after` from then on,
    on the stacks it applies to (all when None)."""

    name: str
    before: object
    after: object
    since: str
    source: str
    stacks: tuple[str, ...] | None = None


ERA_FACTS = (
    EraFact("attention", "unfused", "flash", "2022-12",
            "FlashAttention (Dao et al. 2022, arXiv 2205.14135) entered Megatron-LM on 2022-12-08 (commit d693034); "
            "stacks that adopted it earlier state it"),
    EraFact("flash_attention", 1, 2, "2023-07", "FlashAttention-2 released 2023-07-17 (Dao, arXiv 2307.08691)"),
    EraFact("overlap_grad_reduce", False, True, "2023-09",
            "Megatron-LM's --overlap-grad-reduce (NVIDIA/Megatron-LM#391, commit e801b2b, 2023-09-19); DeepSpeed's "
            "pipeline engine reduces after the flush", ("megatron", "deepspeed", "other")),
    EraFact("overlap_param_gather", False, True, "2023-11",
            "Megatron-LM's --overlap-param-gather for the distributed optimizer (commit f048bf8, 2023-11-17)"),
    EraFact("recompute", "full", "selective", "2022-05",
            "selective recomputation (Korthikanti et al. 2022, arXiv 2205.05198; Megatron-LM 2022-05-19, commit "
            "b83477a); before it Megatron-LM's --checkpoint-activations recomputed whole layers"),
)
# Interleaved pipeline stages: opt-in in Megatron-LM (--num-layers-per-virtual-pipeline-stage, off by
# default since its introduction, commit dd88906, 2020-12); DeepSpeed's pipeline engine has none.
NON_INTERLEAVED_STACKS = ("megatron", "deepspeed")
# The ends (embedding, output layer) counted in the pipeline split: opt-in in Megatron-LM since 2024-09
# (--account-for-embedding-in-pipeline-split, commit fa8bb59); a run of another stack that did it says so.
UNEVEN_ENDS_SINCE = "2024-09"


def era_defaults(era: str, stack: str) -> dict[str, object]:
    """Each ERA_FACTS fact's value for a run of `stack` that trained in `era` (YYYY-MM)."""
    out: dict[str, object] = {}
    for f in ERA_FACTS:
        if f.stacks is None or stack in f.stacks:
            out[f.name] = f.after if era >= f.since else f.before
    if stack == "fsdp":
        out.setdefault("overlap_grad_reduce", True)      # FSDP reduce-scatters under the backward
    if stack in NON_INTERLEAVED_STACKS:
        out["interleave"] = 1
    if stack in ("megatron", "deepspeed", "fsdp") or era < UNEVEN_ENDS_SINCE:
        out["ends_in_split"] = False
    return out
