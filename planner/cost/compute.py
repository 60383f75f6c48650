"""Time of one decoder layer (and of the logits) on one GPU for one micro-batch.

The layer's parts come from planner/model/anatomy.py: its GEMMs and the attention kernel are timed by
the device model; its element-wise kernels are charged by the bytes they move through HBM.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.cost.device import DeviceModel
from planner.model import anatomy
from planner.model.specs import Layout, ModelSpec, Software


@dataclass(frozen=True)
class LayerTime:
    """Seconds per micro-batch on one GPU, split by kind of work."""

    gemm_fwd: float
    gemm_bwd: float
    attn_fwd: float
    attn_bwd: float
    mem_fwd: float
    mem_bwd: float
    norm_act_fwd: float = 0.0    # the LayerNorms and the activation, forward (selective recompute)
    issue_fwd: float = 0.0       # the host's time to issue each pass's kernels (GPU; DeviceModel.issue_s)
    issue_bwd: float = 0.0

    @property
    def forward(self) -> float:
        return max(self.gemm_fwd + self.attn_fwd + self.mem_fwd, self.issue_fwd)

    @property
    def backward(self) -> float:
        return max(self.gemm_bwd + self.attn_bwd + self.mem_bwd, self.issue_bwd)

    @property
    def attention_core_fwd(self) -> float:
        return self.attn_fwd


# Passes over the b·a·s² score matrix of an unfused attention core (Megatron-LM 2021/2022:
# fused scale-mask-softmax, then dropout): forward softmax read+write (2) and dropout
# read+write+1-byte mask (2.5); backward dropout (2.5) and softmax (3).
_UNFUSED_SCORE_PASSES_FWD = 4.5
_UNFUSED_SCORE_PASSES_BWD = 5.5
# Element-wise backward kernels read the saved input and the incoming gradient and write one
# gradient (plus small reductions): about twice the forward traffic.
_MEMBOUND_BWD_FACTOR = 2.0


# FlashAttention (v1) against FlashAttention-2 on A100s: "about 2× faster" (Dao 2023, arXiv
# 2307.08691; v1 reaches 25–40 % of peak, v2 50–73 %). Profiles measure v2 (torch's SDPA).
FLASH_V1_SLOWDOWN = 2.0


def layer_time(dev: DeviceModel, model: ModelSpec, layout: Layout, software: Software = Software()) -> LayerTime:
    return _layer_time(dev, model, layout.tp, layout.micro_batch, layout.sequence_parallel, layout.attention,
                       software)


@lru_cache(maxsize=65536)
def _layer_time(dev: DeviceModel, model: ModelSpec, t: int, b: int, sequence_parallel: bool,
                attention: str, software: Software) -> LayerTime:
    s = model.seq
    tokens = b * s
    local_heads = model.heads // t
    e = dev.bytes_per_element

    gemm_fwd = gemm_bwd = 0.0
    for matmul in anatomy.matmuls(model):
        fwd, bwd = dev.linear_s(tokens, *matmul.local(t))
        gemm_fwd += fwd
        gemm_bwd += bwd

    if attention == "flash":
        attn_fwd, attn_bwd = dev.flash_attention_s(b, s, local_heads, model.head_dim)
        if software.flash_attention == 1:
            attn_fwd, attn_bwd = FLASH_V1_SLOWDOWN * attn_fwd, FLASH_V1_SLOWDOWN * attn_bwd
    else:
        batch = b * local_heads
        d = model.head_dim
        # QKᵀ (s×d · d×s) and P·V (s×s · s×d); backward two products each.
        attn_fwd = dev.gemm_s(s, s, d, batch) + dev.gemm_s(s, d, s, batch)
        attn_bwd = 2 * dev.gemm_s(s, s, d, batch) + 2 * dev.gemm_s(s, d, s, batch)
        scores = batch * s * s * e
        attn_fwd += dev.memory_bound_s(_UNFUSED_SCORE_PASSES_FWD * scores, kernels=2)
        attn_bwd += dev.memory_bound_s(_UNFUSED_SCORE_PASSES_BWD * scores, kernels=2)

    # Each element-wise op is charged at its own kernel's achieved bandwidth; the kernels that move
    # no counted elements (the rest of each op's launches) cost their launch overhead.
    ops = anatomy.elementwise_ops(model, software.dropout)
    moved = {op.name: tokens * op.elements_per_token(t, sequence_parallel) * e for op in ops}   # bytes, forward
    fused = software.compiled
    fwd_by_op = {op.name: dev.memory_bound_s(moved[op.name], op=op.kernel, fused=fused) for op in ops}
    mem_fwd = sum(fwd_by_op.values())
    mem_bwd = sum(dev.memory_bound_s(_MEMBOUND_BWD_FACTOR * moved[op.name], op=op.kernel, fused=fused)
                  for op in ops)
    launches = sum(op.launches for op in ops) + anatomy.OTHER_KERNELS_FWD - len(ops)
    mem_fwd += dev.memory_bound_s(0, kernels=launches)
    mem_bwd += dev.memory_bound_s(0, kernels=2 * launches)
    kernels_fwd, kernels_bwd = layer_kernels(model, software.dropout)
    return LayerTime(gemm_fwd, gemm_bwd, attn_fwd, attn_bwd, mem_fwd, mem_bwd,
                     norm_act_fwd=sum(fwd_by_op[op.name] for op in ops if op.selective),
                     issue_fwd=dev.issue_s(kernels_fwd), issue_bwd=dev.issue_s(kernels_bwd))


def layer_kernels(model: ModelSpec, dropout: float = 0.0) -> tuple[int, int]:
    """Kernels a layer's forward and backward start: the GEMMs (backward: data and weight
    gradients), attention (backward: FlashAttention-2's pre-processing and main kernels), the
    element-wise ones (backward twice). The profiler divides the host's measured time to issue a
    layer by these (profiles/layer.py issue_probe)."""
    elementwise = sum(op.launches for op in anatomy.elementwise_ops(model, dropout)) + anatomy.OTHER_KERNELS_FWD
    n_gemm = len(anatomy.matmuls(model))
    return n_gemm + 1 + elementwise, 2 * n_gemm + 2 + 2 * elementwise


def logits_time(dev: DeviceModel, model: ModelSpec, layout: Layout) -> tuple[float, float]:
    """(forward, backward) of the vocabulary-parallel output layer and cross-entropy."""
    return _logits_time(dev, model, layout.tp, layout.micro_batch)


@lru_cache(maxsize=16384)
def _logits_time(dev: DeviceModel, model: ModelSpec, tp: int, micro_batch: int) -> tuple[float, float]:
    tokens = micro_batch * model.seq
    vocab_local = model.vocab / tp
    fwd, bwd = dev.linear_s(tokens, model.hidden, vocab_local)
    # Cross-entropy in fp32 over the local logits: max, exp-sum, gather; backward softmax − 1.
    ce_bytes = tokens * vocab_local * 4
    fwd += dev.memory_bound_s(3 * ce_bytes, kernels=3)
    bwd += dev.memory_bound_s(2 * ce_bytes, kernels=2)
    return fwd, bwd
