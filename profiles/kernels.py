"""Kernel measurements: the GEMMs of a decoder layer, attention, and the memory-bound ops.

The GEMMs and element-wise ops are those of planner/model/anatomy.py's layer (an FLM/GPT layer with
f = 4h) at each tensor-parallel split, each GEMM forward (y = xW), backward-data (dx = dy·Wᵀ)
and backward-weight (dW = xᵀ·dy).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from planner.model import anatomy
from planner.model.specs import ModelSpec
from profiles.timing import Timing, measure
from runtime.model.decoder import apply_rotary

# Which GEMM of a linear layer y = x·Wᵀ (nn.Linear keeps W as out × in): forward x·Wᵀ,
# backward-data dy·W, backward-weight dyᵀ·x. The operands' memory layouts are those autograd uses.
PASSES = ("forward", "backward_data", "backward_weight")


def profiled_layer(hidden: int) -> ModelSpec:
    """The layer the sweep measures at this width: GeLU, f = 4h, one head (the GEMM shapes and
    element-wise traffic do not depend on the head count)."""
    return ModelSpec(layers=1, hidden=hidden, heads=1, ffn=4 * hidden, vocab=1, seq=1)


def layer_gemm_shapes(hidden: int, tokens: int, tp: int) -> set[tuple[int, int, int, str]]:
    """(m, n, k, pass) of every GEMM in one layer's forward and backward at this split, keyed as
    the cost model asks for them: forward (T, out, in), data (T, in, out), weight (in, out, T)."""
    shapes = set()
    for matmul in anatomy.matmuls(profiled_layer(hidden)):
        d_in, d_out = matmul.local(tp)
        shapes.add((tokens, d_out, d_in, "forward"))
        shapes.add((tokens, d_in, d_out, "backward_data"))
        shapes.add((d_in, d_out, tokens, "backward_weight"))
    return shapes


# Operands are rotated through enough copies to exceed the caches, as in a real layer where
# each GEMM's inputs were last touched by other kernels.
ROTATE_BYTES = 64 << 20
MAX_COPIES = 8


def measure_gemm(m: int, n: int, k: int, kind: str, device: torch.device, dtype: torch.dtype, reps: int,
                 budget_s: float = 1.0) -> Timing:
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    def operands() -> tuple[torch.Tensor, torch.Tensor]:
        if kind == "forward":             # x (m × k) · Wᵀ, W stored n × k
            return rand(m, k), rand(n, k).t()
        if kind == "backward_data":       # dy (m × k) · W, W stored k × n
            return rand(m, k), rand(k, n)
        return rand(k, n).t(), rand(k, m)  # dW (n × m) = dyᵀ · x with dy (k × n), x (k × m)

    size = (m * k + k * n) * torch.finfo(dtype).bits // 8
    copies = [operands() for _ in range(max(1, min(MAX_COPIES, ROTATE_BYTES // max(size, 1))))]
    turn = iter(range(1 << 30))

    def run() -> torch.Tensor:
        a, b = copies[next(turn) % len(copies)]
        return torch.mm(a, b)

    return measure(run, device, min_reps=reps, budget_s=budget_s)


def measure_attention(batch: int, seq: int, heads: int, head_dim: int, device: torch.device,
                      dtype: torch.dtype, reps: int, budget_s: float = 1.0) -> tuple[Timing, Timing]:
    """(forward, backward) seconds of causal scaled_dot_product_attention (flash where available)."""
    shape = (batch, heads, seq, head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    fwd = measure(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), device, min_reps=reps,
                  budget_s=budget_s)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    grad = torch.randn_like(out)

    def backward() -> None:
        torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)

    bwd = measure(backward, device, min_reps=reps, budget_s=budget_s)
    return fwd, bwd


def memory_bound_ops(tokens: int, hidden: int, device: torch.device, dtype: torch.dtype) -> Iterable[tuple]:
    """(kernel, bytes moved, callable) for each element-wise kernel of the layer: LayerNorm, GeLU,
    residual add and rotary, moving the elements per pass the anatomy counts."""
    e = torch.finfo(dtype).bits // 8
    passes = {op.kernel: op.passes for op in anatomy.elementwise_ops(profiled_layer(hidden))}
    x = torch.randn(tokens, hidden, device=device, dtype=dtype)
    y = torch.randn_like(x)
    w = torch.ones(hidden, device=device, dtype=dtype)
    b = torch.zeros(hidden, device=device, dtype=dtype)
    half = hidden // 2
    cos = torch.randn(tokens, half, device=device, dtype=dtype)
    sin = torch.randn_like(cos)
    n = tokens * hidden

    yield "layernorm", passes["layernorm"] * n * e, lambda: F.layer_norm(x, (hidden,), w, b)
    yield "gelu", passes["gelu"] * n * e, lambda: F.gelu(x, approximate="tanh")
    yield "residual_add", passes["residual_add"] * n * e, lambda: x + y
    # The runtime's own rotary (its tokens as the sequence, the hidden width as one head).
    yield "rotary", passes["rotary"] * n * e, lambda: apply_rotary(x, cos, sin, None)
