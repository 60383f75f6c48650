"""µP for Adam (Yang et al. 2022, Tensor Programs V, Table 3 and its readout form, Table 8).

Everything that depends on the parametrization lives here, so the model, the optimizer and a
growth read one rule. With width_mult = hidden / base_width:

- hidden matrices (Q, K, V, attention output, MLP up/gate/down): init variance / width_mult,
  Adam learning rate / width_mult, weight decay × width_mult (FLM-101B's code: lr·wd stays
  constant, so decoupled decay shrinks the weights as at the base width);
- the embedding, biases and LayerNorms: as in SP (constant init and learning rate);
- the readout: logits × output_mult / width_mult (tied embeddings too: the multiplier is on the
  logits, the embedding keeps its input role);
- attention logits: × attn_mult / d_head instead of 1 / √d_head.

At width_mult = 1 µP and SP train the same model; "sp" (the default) ignores the multipliers.
"""

from __future__ import annotations

import math

from torch import nn

from planner.model.optimizer import WEIGHT_DECAY

BASE_WEIGHT_DECAY = WEIGHT_DECAY   # AdamW's decoupled decay on matrices (planner/plan/plan_file.py)


def width_mult(cfg) -> float:
    """hidden / base_width under µP; 1 under SP."""
    return cfg.hidden / cfg.mup_base_width if cfg.mup else 1.0


def is_hidden_matrix(name: str, p: nn.Parameter) -> bool:
    """A matrix inside a block: both its fan-in and fan-out grow with the width."""
    return ".blocks." in f".{name}" and p.dim() >= 2


def init_std(cfg, name: str, p: nn.Parameter) -> float:
    """GPT-2's init (std init_std; output projections / √(2·layers)); µP's hidden matrices / √width_mult."""
    std = cfg.init_std
    if name.endswith(("o.weight", "down.weight")):
        std /= math.sqrt(2 * cfg.layers)
    if is_hidden_matrix(name, p):
        std /= math.sqrt(width_mult(cfg))
    return std


def lr_mult(cfg, name: str, p: nn.Parameter) -> float:
    """The factor on the stage's learning rate for this parameter."""
    return 1.0 / width_mult(cfg) if is_hidden_matrix(name, p) else 1.0


def weight_decay(cfg, name: str, p: nn.Parameter) -> float:
    """Matrices decay, LayerNorms, biases and the embedding do not (GPT-3, Megatron)."""
    if p.dim() < 2 or name.startswith("embed."):
        return 0.0
    return BASE_WEIGHT_DECAY * (width_mult(cfg) if is_hidden_matrix(name, p) else 1.0)


def readout_mult(cfg) -> float:
    """What the logits are multiplied by."""
    return cfg.mup_output_mult / width_mult(cfg) if cfg.mup else 1.0


def attention_scale(cfg) -> float:
    """What Q·Kᵀ is multiplied by: attn_mult / d under µP (scores stay Θ(1) as d grows), 1/√d under SP."""
    d = cfg.head_dim
    return cfg.mup_attn_mult / d if cfg.mup else 1.0 / math.sqrt(d)
