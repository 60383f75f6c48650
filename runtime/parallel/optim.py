"""The optimizer of every layout: fused AdamW on fp32 master weights (µP's per-group rates), and the
learning rate set per step (its schedule: runtime/training/lr_schedule.py)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from planner.model.optimizer import ADAM_BETAS, ADAM_EPS
from runtime.model import mup


def make_optimizer(chunk: nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW (β = 0.9, 0.95; weight decay on matrices only, not on LayerNorms, biases or the
    embedding, as GPT-3 and Megatron do); the fused kernel, on CPUs too (a third of foreach's time on
    this project's CPU, DTensors or not: BENCHMARKS.md#cpu-step-cost). One parameter
    group per learning-rate factor and decay (µP's, runtime/model/mup.py: each group's `lr_mult` scales
    the stage's rate) and per kind of tensor (plain, DTensors of each mesh): the multi-tensor
    kernels take one kind per call. Groups follow the shards: a chunk names its parameters as the
    whole model does."""
    cfg = chunk.cfg
    groups: dict[tuple, list[nn.Parameter]] = {}
    for name, p in chunk.named_parameters():
        kind = (tuple(p.device_mesh.mesh.flatten().tolist()), p.device_mesh.mesh_dim_names) \
            if isinstance(p, DTensor) else None
        groups.setdefault((mup.lr_mult(cfg, name, p), mup.weight_decay(cfg, name, p), kind), []).append(p)
    return torch.optim.AdamW([{"params": ps, "weight_decay": wd, "lr": lr * mult, "lr_mult": mult}
                              for (mult, wd, _), ps in groups.items()],
                             lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate for this step, times each group's µP factor."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
