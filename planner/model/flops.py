"""FLOPs of a training step in the two conventions people publish.

MFU-style model FLOPs count forward + backward (3 × forward) and no recompute; HFU-style
hardware FLOPs add what recompute executes again. Attention FLOPs are counted in full
(not halved for causal masking), the convention of Narayanan et al. 2021 and llm-foundry.
"""

from __future__ import annotations

from functools import lru_cache

from planner.model.anatomy import attention_flops_per_token, linear_flops_per_token
from planner.model.specs import ModelSpec, Recompute


def logits_flops_per_token(model: ModelSpec) -> float:
    """The output layer: h × vocab, 2 FLOPs per multiply-add."""
    return 2 * model.hidden * model.vocab


@lru_cache(maxsize=4096)
def forward_flops_per_token(model: ModelSpec) -> float:
    """For GPT with f = 4h this is 24·l·h²·(1 + s/(6h)) + 2·h·V (Narayanan et al. 2021, eq. 3 / 3)."""
    per_layer = linear_flops_per_token(model) + attention_flops_per_token(model)
    return model.layers * per_layer + logits_flops_per_token(model)


def model_flops_per_token(model: ModelSpec) -> float:
    """MFU convention: forward + backward = 3 × forward, no recompute."""
    return 3 * forward_flops_per_token(model)


def recompute_flops_per_token(model: ModelSpec, recompute: Recompute, attention: str = "unfused") -> float:
    """What recompute adds to one token's step (Korthikanti et al. 2022, §5): full re-runs
    every layer's forward (not the logits); selective re-runs the attention core when it is
    unfused, and only element-wise work (LayerNorms, the activation) under flash attention."""
    if recompute == "full":
        return model.layers * (linear_flops_per_token(model) + attention_flops_per_token(model))
    if recompute == "selective" and attention == "unfused":
        return model.layers * attention_flops_per_token(model)
    return 0.0


def hardware_flops_per_token(model: ModelSpec, recompute: Recompute, attention: str = "unfused") -> float:
    """HFU convention: 96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)) per step for full recompute
    (Narayanan et al. 2021, eq. 3), generalised to GQA, SwiGLU and the other modes."""
    return model_flops_per_token(model) + recompute_flops_per_token(model, recompute, attention)


def step_flops(model: ModelSpec, global_batch: int, recompute: Recompute,
               attention: str = "unfused") -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one optimizer step over the whole cluster."""
    tokens = global_batch * model.seq
    return (tokens * model_flops_per_token(model),
            tokens * hardware_flops_per_token(model, recompute, attention))
