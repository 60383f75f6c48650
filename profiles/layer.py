"""Whole decoder layer (runtime/model.py's Block) forward, backward, and backward with full
recompute: the ground truth the cost model's layer time is checked against."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from profiles.timing import time_fn


def measure_layer(hidden: int, heads: int, seq: int, micro_batch: int, device: torch.device,
                  dtype: torch.dtype, reps: int) -> dict:
    from runtime.model import Block, DecoderConfig, rotary_tables

    cfg = DecoderConfig(layers=1, hidden=hidden, heads=heads, ffn=4 * hidden, vocab=8, seq=seq)
    block = Block(cfg).to(device=device, dtype=dtype)
    rope = tuple(t.to(dtype) for t in rotary_tables(cfg, seq, device))
    x = torch.randn(micro_batch, seq, hidden, device=device, dtype=dtype, requires_grad=True)

    def forward() -> torch.Tensor:
        return block(x, rope, None)

    def recompute_forward() -> torch.Tensor:
        return checkpoint(block, x, rope, None, use_reentrant=False)

    fwd = time_fn(forward, device, warmup=1, reps=reps)
    grad = torch.randn(micro_batch, seq, hidden, device=device, dtype=dtype)
    params = [x, *block.parameters()]

    def backward_of(make) -> float:
        def step() -> None:
            out = make()
            torch.autograd.grad(out, params, grad)
        return time_fn(step, device, warmup=1, reps=reps) - fwd

    return {
        "hidden": hidden, "heads": heads, "ffn": 4 * hidden, "seq": seq, "micro_batch": micro_batch,
        "forward_s": fwd,
        "backward_s": backward_of(forward),
        "backward_recompute_s": backward_of(recompute_forward),
    }
