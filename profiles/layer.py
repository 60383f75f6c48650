"""Whole decoder layer (runtime/model/decoder.py's Block) forward, backward, and backward with full
recompute: the ground truth the cost model's layer time is checked against."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from profiles.timing import measure


def measure_layer(hidden: int, heads: int, seq: int, micro_batch: int, device: torch.device,
                  dtype: torch.dtype, reps: int, budget_s: float = 2.0) -> dict:
    """Times of one layer, with each measurement's spread and, for forward + backward, the host's
    time to issue it (near the device time when the layer is bound by the host, not the GPU)."""
    from runtime.model.decoder import Block, DecoderConfig, rotary_tables

    cfg = DecoderConfig(layers=1, hidden=hidden, heads=heads, ffn=4 * hidden, vocab=8, seq=seq)
    block = Block(cfg).to(device=device, dtype=dtype)
    rope = rotary_tables(cfg, seq, device, dtype)
    x = torch.randn(micro_batch, seq, hidden, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(micro_batch, seq, hidden, device=device, dtype=dtype)
    params = [x, *block.parameters()]

    def forward() -> torch.Tensor:
        return block(x, rope, None)

    def recompute_forward() -> torch.Tensor:
        return checkpoint(block, x, rope, None, use_reentrant=False)

    def step_of(make):
        def step() -> None:
            torch.autograd.grad(make(), params, grad)
        return step

    fwd = measure(forward, device, min_reps=reps, budget_s=budget_s)
    step = measure(step_of(forward), device, min_reps=reps, budget_s=budget_s)
    step_rc = measure(step_of(recompute_forward), device, min_reps=reps, budget_s=budget_s)
    return {
        "hidden": hidden, "heads": heads, "ffn": 4 * hidden, "seq": seq, "micro_batch": micro_batch,
        "forward_s": fwd.median_s,
        "backward_s": step.median_s - fwd.median_s,
        "backward_recompute_s": step_rc.median_s - fwd.median_s,
        "spread": round(max(fwd.spread, step.spread, step_rc.spread), 4),
        "host_s": step.host_s,
    }


# The issue probe's layer: small enough that its kernels take far less than their launch on any
# GPU, so that the host's time to issue it is all the step waits for.
ISSUE_PROBE = (256, 4, 128, 1)      # hidden, heads, seq, micro_batch


def issue_probe(device: torch.device, dtype: torch.dtype, reps: int, budget_s: float = 2.0) -> dict:
    """The host's time per kernel to issue the runtime's own layer, forward and backward (Python,
    autograd and the dispatcher around each launch), which bounds a pass on a GPU from below
    however little its kernels compute (planner/cost/device.py issue_s). On a GPU only: a CPU runs each
    kernel on the host that dispatches it."""
    from planner.cost.compute import layer_kernels
    from planner.model.specs import ModelSpec

    hidden, heads, seq, micro_batch = ISSUE_PROBE
    layer = measure_layer(hidden, heads, seq, micro_batch, device, dtype, reps, budget_s)
    fwd, bwd = layer_kernels(ModelSpec(layers=1, hidden=hidden, heads=heads, ffn=4 * hidden, vocab=8, seq=seq))
    return {"layer": layer, "kernels": fwd + bwd, "us_per_kernel": round(layer["host_s"] / (fwd + bwd) * 1e6, 3),
            "method": "the host's median time to issue forward + backward of the runtime's layer at this "
                      "shape (its kernels far shorter than their launch), over the kernels the cost model "
                      "counts for it (planner/cost/compute.py layer_kernels)"}
