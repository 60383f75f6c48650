"""Memory per GPU: model states by ZeRO stage and activations by recompute mode.

Model states follow ZeRO (Rajbhandari et al. 2020) for mixed-precision Adam: 2 bytes of
bf16 weights, 4 of fp32 gradients (Megatron's main_grad) and 12 of optimizer state (fp32
master copy, Adam m and v) per parameter. Activations are the tensors planner/model/anatomy.py says a
layer keeps (Korthikanti et al. 2022, §4).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.model.anatomy import final_layernorm_params, stored_bytes_per_token
from planner.model.specs import BYTES_PER_GIB, Layout, ModelSpec, stage_layers

WEIGHT_BYTES = 2
GRAD_BYTES = 4
OPTIMIZER_BYTES = 12
# CUDA context, NCCL buffers and allocator fragmentation.
FRAMEWORK_FIXED_GIB = 2.0
FRAMEWORK_FRACTION = 0.05


@dataclass(frozen=True)
class MemoryEstimate:
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    logits_gib: float
    framework_gib: float

    @property
    def total_gib(self) -> float:
        return (self.weights_gib + self.grads_gib + self.optimizer_gib + self.activations_gib
                + self.logits_gib + self.framework_gib)


@lru_cache(maxsize=65536)
def stage_params(model: ModelSpec, layout: Layout) -> float:
    """Parameters on the GPU that holds the most, as tensor parallelism splits them: weights and
    the vocabulary-parallel embedding split over tp, LayerNorms and row-parallel biases whole.
    Under pipeline parallelism the first stage (the embedding, and the remainder of the layers)
    or the last (its copy of the tied embedding, or the output head, and the final LayerNorm)."""
    t = layout.tp
    replicated = model.tp_replicated_layer_params()
    per_layer = (model.layer_params() - replicated) / t + replicated
    final_norm = final_layernorm_params(model)
    if layout.pp == 1:
        return model.layers * per_layer + (model.embedding_params() - final_norm) / t + final_norm
    embedding = model.vocab * model.hidden / t
    layers = stage_layers(model.layers, layout)
    first = layers[0] * per_layer + embedding
    last = layers[-1] * per_layer + embedding + final_norm
    return max(first, last, max(layers) * per_layer)


def activation_bytes_per_layer(model: ModelSpec, layout: Layout) -> float:
    """Bytes one layer keeps for backward, for one micro-batch (the tensors of planner/model/anatomy.py)."""
    per_token = stored_bytes_per_token(model, layout.recompute, layout.attention, layout.tp,
                                       layout.sequence_parallel)
    return per_token * model.seq * layout.micro_batch


def micro_batches_in_flight(layout: Layout) -> float:
    """Micro-batches whose activations the first stage holds at peak: p under 1F1B (times
    1 + (p−1)/(p·v) when interleaved, Narayanan et al. 2021 §2.2.2), at most m."""
    p, v, m = layout.pp, layout.interleave, layout.micro_batches
    if p == 1:
        return 1.0
    in_flight = p * (1 + (p - 1) / (p * v)) if v > 1 else p
    return min(in_flight, m)


def memory_per_gpu(model: ModelSpec, layout: Layout) -> MemoryEstimate:
    params = stage_params(model, layout)
    dp = layout.dp
    weights = params * WEIGHT_BYTES / (dp if layout.zero >= 3 else 1)
    grads = params * GRAD_BYTES / (dp if layout.zero >= 2 else 1)
    optimizer = params * OPTIMIZER_BYTES / (dp if layout.zero >= 1 else 1)

    # The first stage holds the most micro-batches in flight (and the most layers, unless the
    # embedding takes a layer's place there).
    layers = max(stage_layers(model.layers, layout)) if layout.pp > 1 else model.layers
    per_layer = activation_bytes_per_layer(model, layout)
    activations = per_layer * layers * micro_batches_in_flight(layout)
    if layout.recompute == "full":
        # One layer is live at full size while it is recomputed during backward.
        activations += activation_bytes_per_layer(model, layout.with_(recompute="none"))
    if layout.zero >= 3:
        # FSDP keeps the gathered weights of the current and the prefetched layer.
        weights += 2 * model.layer_params() * WEIGHT_BYTES / layout.tp

    # The last stage materialises fp32 logits and their gradient for one micro-batch.
    tokens = layout.micro_batch * model.seq
    logits = 2 * tokens * model.vocab / layout.tp * 4

    states = weights + grads + optimizer + activations + logits
    framework = FRAMEWORK_FIXED_GIB * BYTES_PER_GIB + FRAMEWORK_FRACTION * states
    g = BYTES_PER_GIB
    return MemoryEstimate(weights / g, grads / g, optimizer / g, activations / g, logits / g, framework / g)
